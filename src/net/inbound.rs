//! Inbound connections: accept, enforce connection limits, and drive a [`Session`] with
//! the bytes the socket delivers. Every buffered command is processed before the replies
//! go out in one write (PIPELINING); a message's 250 waits for the queue log's sync.

use crate::net::stream::Stream;
use crate::net::watchdog::Watch;
use crate::queue::record::NewMessage;
use crate::shard::Shard;
use crate::smtp::session::{AuthResult, Event, ListenerMode, Session};
use futures_lite::future;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Pause after an accept error such as EMFILE, so a full fd table does not spin the shard.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, mode: ListenerMode) {
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            shard.drain_started.wait().await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                glommio::spawn_local(serve(Rc::clone(&shard), stream, mode)).detach();
            }
            Some(Err(e)) => {
                log::warn!("shard {}: accept failed: {e}", shard.id);
                glommio::timer::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// Counts a connection against the shard's limits for as long as it lives.
struct Admission {
    shard: Rc<Shard>,
    ip: IpAddr,
}

impl Admission {
    fn try_new(shard: &Rc<Shard>, ip: IpAddr) -> Option<Admission> {
        let limits = &shard.limits;
        let mut per_ip = shard.per_ip.borrow_mut();
        let n = per_ip.entry(ip).or_insert(0);
        if shard.connections.get() >= limits.max_connections || *n >= limits.max_connections_per_ip
        {
            if *n == 0 {
                per_ip.remove(&ip);
            }
            return None;
        }
        *n += 1;
        shard.connections.set(shard.connections.get() + 1);
        Some(Admission {
            shard: Rc::clone(shard),
            ip,
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let s = &self.shard;
        s.connections.set(s.connections.get() - 1);
        let mut per_ip = s.per_ip.borrow_mut();
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        drop(per_ip);
        s.connection_closed.raise();
    }
}

async fn serve(shard: Rc<Shard>, tcp: TcpStream, mode: ListenerMode) {
    let Ok(peer) = tcp.peer_addr() else { return };
    let cfg = Rc::clone(&shard.session.borrow());
    let mut session = Session::with_mode(&cfg, peer.ip(), mode);
    let mut out = Vec::with_capacity(1024);
    // Writes keep glommio's timeout (it costs nothing unless a write would block); reads
    // are bounded by the shard's watchdog, per command rather than per read.
    let _ = tcp.set_write_timeout(Some(shard.limits.command_timeout));
    let watch = shard.watchdog.register(tcp.as_raw_fd());
    let mut stream = Stream::Plain(tcp);
    if mode.implicit_tls {
        // smtps (RFC 8314): the handshake comes before the greeting.
        let Some(tls) = shard.tls.as_ref() else {
            return;
        };
        watch.arm(Instant::now() + shard.limits.command_timeout);
        let upgraded = stream.upgrade_server(tls.current()).await;
        watch.disarm();
        stream = match upgraded {
            Ok(s) => s,
            Err(e) => {
                log::debug!("shard {}: TLS handshake with {peer} failed: {e}", shard.id);
                return;
            }
        };
        session.tls_started(stream.tls_info().unwrap_or_default());
    }
    let Some(_admission) = Admission::try_new(&shard, peer.ip()) else {
        session.too_many_connections(&mut out);
        let _ = stream.write_all(&out).await;
        let _ = stream.close().await;
        return;
    };
    if let Some(tcp) = stream.tcp() {
        let _ = tcp.set_nodelay(true);
    }
    let pause = shard.limits.greet_pause;
    if !pause.is_zero() && !mode.implicit_tls {
        if let Some(tcp) = stream.tcp() {
            if talks_first(tcp, pause).await {
                log::warn!(
                    "shard {}: {peer} talked before the greeting (greet_pause {pause:?})",
                    shard.id
                );
                session.pregreet(&mut out);
                let _ = stream.write_all(&out).await;
                let _ = stream.close().await;
                return;
            }
        }
    }
    session.greeting(&mut out);
    if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    out.clear();
    let mut conn = Conn {
        shard: &shard,
        buf: vec![0; shard.limits.read_buffer_bytes],
        start: 0,
        end: 0,
        received: Vec::with_capacity(256),
        peer_text: peer.ip().to_string(),
        stream,
        watch,
        deadline: Instant::now(),
        in_content: false,
        progressed: false,
    };
    if let Err(e) = conn.run(&mut session, &mut out).await {
        if conn.watch.fired() {
            session.timeout(&mut out);
        } else {
            log::debug!("shard {}: session with {} ended: {e}", shard.id, peer);
        }
    }
    if !out.is_empty() {
        let _ = conn.stream.write_all(&out).await;
        let _ = conn.stream.flush().await;
    }
    let _ = conn.stream.close().await;
}

struct Conn<'s> {
    shard: &'s Rc<Shard>,
    buf: Vec<u8>,
    /// Unconsumed input is `buf[start..end]`.
    start: usize,
    end: usize,
    received: Vec<u8>,
    peer_text: String,
    stream: Stream,
    watch: Watch,
    /// When the command (or the content transfer) being read must be complete.
    deadline: Instant,
    /// The deadline in force is a content deadline.
    in_content: bool,
    /// A command was completed since the deadline was set: the next one gets its own.
    progressed: bool,
}

/// greet_pause: true when the client sends anything before the pause is over.
async fn talks_first(tcp: &TcpStream, pause: Duration) -> bool {
    let mut probe = [0u8; 1];
    future::or(
        async { matches!(tcp.peek(&mut probe).await, Ok(n) if n > 0) },
        async {
            glommio::timer::sleep(pause).await;
            false
        },
    )
    .await
}

enum Read {
    Bytes(usize),
    Eof,
    Timeout,
    ShuttingDown,
}

impl Conn<'_> {
    async fn run(&mut self, session: &mut Session<'_>, out: &mut Vec<u8>) -> io::Result<()> {
        loop {
            match self.read(session).await? {
                Read::Bytes(n) => self.end += n,
                Read::Eof => return Ok(()),
                Read::Timeout => {
                    session.timeout(out);
                    return Ok(());
                }
                Read::ShuttingDown => {
                    session.shutting_down(out);
                    return Ok(());
                }
            }
            if self.process(session, out).await? {
                return Ok(());
            }
            if self.shard.drain_started.get().is_some()
                && !session.in_transaction()
                && self.start == self.end
            {
                // Draining: the transaction in progress is done, take no new one.
                session.shutting_down(out);
                return Ok(());
            }
            self.flush(out).await?;
        }
    }

    async fn flush(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        if !out.is_empty() {
            self.stream.write_all(out).await?;
            self.stream.flush().await?;
            out.clear();
        }
        Ok(())
    }

    /// Feeds the session everything buffered. Returns true when the session is over.
    async fn process(&mut self, session: &mut Session<'_>, out: &mut Vec<u8>) -> io::Result<bool> {
        loop {
            let (used, event) = session.feed(&self.buf[self.start..self.end], out);
            self.start += used;
            self.progressed |= used > 0;
            match event {
                Event::NeedInput => return Ok(false),
                Event::Close => return Ok(true),
                Event::Message => self.store(session, out).await,
                Event::StartTls => self.starttls(session, out).await?,
                Event::Auth => self.authenticate(session, out).await,
                Event::Etrn => {
                    let n = self.shard.links.flush_everywhere(session.etrn_node());
                    log::info!(
                        "shard {}: ETRN {} from {}: {n} deferred recipients here (and those of other shards) retried now",
                        self.shard.id,
                        session.etrn_node(),
                        self.peer_text
                    );
                }
            }
        }
    }

    async fn store(&mut self, session: &mut Session<'_>, out: &mut Vec<u8>) {
        let log = &self.shard.log;
        let id = log.next_id();
        let mut hex = [0u8; 16];
        id.write_hex(&mut hex);
        let id_text = std::str::from_utf8(&hex).unwrap_or_default();
        let now = crate::time::unix_micros();
        self.received.clear();
        session.received_header(id_text, now / 1_000_000, &mut self.received);
        // The transaction ends with this store either way: the log keeps its envelope.
        let envelope = std::rc::Rc::new(session.take_envelope());
        let ticket = log.append_message(&NewMessage {
            id,
            arrival_micros: now,
            client: &self.peer_text,
            helo: session.helo(),
            envelope: std::rc::Rc::clone(&envelope),
            received: &self.received,
            content: session.content(),
        });
        let result = ticket.wait().await;
        let waited = crate::time::unix_micros().saturating_sub(now);
        self.shard
            .store_us
            .borrow_mut()
            .saturating_record(waited.max(1));
        if result.is_ok() {
            self.shard.accepted.set(self.shard.accepted.get() + 1);
            self.shard.qmgr.submit(id);
            log::info!(
                "{id_text}: accepted from=<{}> nrcpt={} size={} client={} tls={}",
                envelope.sender,
                envelope.recipients.len(),
                self.received.len() + session.content().len(),
                self.peer_text,
                session.tls_active()
            );
        }
        session.stored(result.map(|()| id_text), out);
    }

    /// STARTTLS (RFC 3207): the 220 goes out, then anything the client sent after the
    /// command in the same packet is dropped unread (the CVE-2011-0411 command injection),
    /// then the handshake.
    async fn starttls(&mut self, session: &mut Session<'_>, out: &mut Vec<u8>) -> io::Result<()> {
        self.flush(out).await?;
        let injected = self.end - self.start;
        if injected > 0 {
            log::warn!(
                "shard {}: {} sent {injected} octets after STARTTLS; discarded",
                self.shard.id,
                self.peer_text
            );
        }
        self.start = 0;
        self.end = 0;
        let tls = self
            .shard
            .tls
            .as_ref()
            .ok_or_else(|| io::Error::other("no TLS configured"))?;
        let plain = std::mem::replace(&mut self.stream, Stream::Gone);
        self.watch
            .arm(Instant::now() + self.shard.limits.command_timeout);
        let upgraded = plain.upgrade_server(tls.current()).await;
        self.watch.disarm();
        self.stream = upgraded?;
        session.tls_started(self.stream.tls_info().unwrap_or_default());
        Ok(())
    }

    /// Checks AUTH credentials off the executor (password hashing is slow on purpose),
    /// after the per-client failure limit.
    async fn authenticate(&mut self, session: &mut Session<'_>, out: &mut Vec<u8>) {
        let ip = session.peer();
        let result = match (self.shard.auth.as_ref(), session.credentials()) {
            (Some(auth), Some(creds)) => auth.check(ip, creds).await,
            _ => AuthResult::Unavailable,
        };
        if result != AuthResult::Ok {
            log::warn!(
                "shard {}: AUTH failed for {} from {}: {result:?}",
                self.shard.id,
                session.credentials().map_or("", |c| c.user.as_str()),
                self.peer_text
            );
        }
        session.auth_result(result, out);
    }

    /// The deadline for the read about to start: a command must be complete within
    /// `command_timeout` of its first byte's wait however it dribbles in; content must
    /// keep up `min_data_rate` (see [`Conn::credit`]).
    fn arm(&mut self, session: &Session<'_>) {
        let limits = &self.shard.limits;
        if session.in_content() {
            if !self.in_content {
                self.in_content = true;
                self.deadline = Instant::now() + limits.data_timeout;
            } else if limits.min_data_rate == 0 {
                self.deadline = Instant::now() + limits.data_timeout;
            }
        } else if self.in_content || self.progressed || self.start == self.end {
            self.in_content = false;
            self.deadline = Instant::now() + limits.command_timeout;
        }
        self.progressed = false;
        self.watch.arm(self.deadline);
    }

    /// Content read: `n` octets buy `n / min_data_rate` seconds, up to `data_timeout`.
    fn credit(&mut self, n: usize) {
        let limits = &self.shard.limits;
        if self.in_content && limits.min_data_rate > 0 {
            let earned = Duration::from_secs_f64(n as f64 / f64::from(limits.min_data_rate));
            let cap = Instant::now() + limits.data_timeout;
            self.deadline = (self.deadline + earned).min(cap);
        }
    }

    async fn read(&mut self, session: &Session<'_>) -> io::Result<Read> {
        crate::net::stream::make_room(&mut self.buf, &mut self.start, &mut self.end);
        self.arm(session);
        let r = self.read_armed(session).await;
        self.watch.disarm();
        if self.watch.fired() {
            return Ok(Read::Timeout);
        }
        if let Ok(Read::Bytes(n)) = r {
            self.credit(n);
        }
        r
    }

    async fn read_armed(&mut self, session: &Session<'_>) -> io::Result<Read> {
        let stream = &mut self.stream;
        // Between transactions a drain ends the session at once; inside one it may finish
        // until the grace period is over.
        let stop = if session.in_transaction() {
            &self.shard.grace_over
        } else {
            &self.shard.drain_started
        };
        let buf = &mut self.buf[self.end..];
        let r = future::or(async { Some(stream.read(buf).await) }, async {
            stop.wait().await;
            None
        })
        .await;
        match r {
            None => Ok(Read::ShuttingDown),
            Some(Ok(0)) => Ok(Read::Eof),
            Some(Ok(n)) => Ok(Read::Bytes(n)),
            Some(Err(e)) => Err(e),
        }
    }
}
