//! Inbound connections: accept, enforce connection limits, and drive a [`Session`] with
//! the bytes the socket delivers. Every buffered command is processed before the replies
//! go out in one write (PIPELINING); a message's 250 waits for the queue log's sync.

use crate::queue::record::NewMessage;
use crate::shard::Shard;
use crate::smtp::session::{Event, Session};
use futures_lite::future;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::io;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

/// Pause after an accept error such as EMFILE, so a full fd table does not spin the shard.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            shard.drain_started.wait().await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                glommio::spawn_local(serve(Rc::clone(&shard), stream)).detach();
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

async fn serve(shard: Rc<Shard>, mut stream: TcpStream) {
    let Ok(peer) = stream.peer_addr() else { return };
    let mut session = Session::new(&shard.session, peer.ip());
    let mut out = Vec::with_capacity(1024);
    let _ = stream.set_write_timeout(Some(shard.limits.command_timeout));
    let Some(_admission) = Admission::try_new(&shard, peer.ip()) else {
        session.too_many_connections(&mut out);
        let _ = stream.write_all(&out).await;
        let _ = stream.close().await;
        return;
    };
    let _ = stream.set_nodelay(true);
    session.greeting(&mut out);
    if stream.write_all(&out).await.is_err() {
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
    };
    if let Err(e) = conn.run(&mut stream, &mut session, &mut out).await {
        log::debug!("shard {}: session with {} ended: {e}", shard.id, peer);
    }
    if !out.is_empty() {
        let _ = stream.write_all(&out).await;
    }
    let _ = stream.close().await;
}

struct Conn<'s> {
    shard: &'s Rc<Shard>,
    buf: Vec<u8>,
    /// Unconsumed input is `buf[start..end]`.
    start: usize,
    end: usize,
    received: Vec<u8>,
    peer_text: String,
}

enum Read {
    Bytes(usize),
    Eof,
    Timeout,
    ShuttingDown,
}

impl Conn<'_> {
    async fn run(
        &mut self,
        stream: &mut TcpStream,
        session: &mut Session<'_>,
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        loop {
            match self.read(stream, session).await? {
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
            if self.process(session, out).await {
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
            if !out.is_empty() {
                stream.write_all(out).await?;
                out.clear();
            }
        }
    }

    /// Feeds the session everything buffered. Returns true when the session is over.
    async fn process(&mut self, session: &mut Session<'_>, out: &mut Vec<u8>) -> bool {
        loop {
            let (used, event) = session.feed(&self.buf[self.start..self.end], out);
            self.start += used;
            match event {
                Event::NeedInput => return false,
                Event::Close => return true,
                Event::Message => self.store(session, out).await,
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
        let ticket = log.append_message(&NewMessage {
            id,
            arrival_micros: now,
            client: &self.peer_text,
            helo: session.helo(),
            envelope: session.envelope(),
            received: &self.received,
            content: session.content(),
        });
        let result = ticket.wait().await;
        if result.is_ok() {
            self.shard.qmgr.submit(id);
            log::debug!(
                "{id_text}: from=<{}> nrcpt={} size={} client={}",
                session.envelope().sender,
                session.envelope().recipients.len(),
                self.received.len() + session.content().len(),
                self.peer_text
            );
        }
        session.stored(result.map(|()| id_text), out);
    }

    async fn read(&mut self, stream: &mut TcpStream, session: &Session<'_>) -> io::Result<Read> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let limits = &self.shard.limits;
        let timeout = if session.in_content() {
            limits.data_timeout
        } else {
            limits.command_timeout
        };
        stream.set_read_timeout(Some(timeout))?;
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
            Some(Err(e)) if e.kind() == io::ErrorKind::TimedOut => Ok(Read::Timeout),
            Some(Err(e)) => Err(e),
        }
    }
}
