//! `loadgen sink`: the SMTP (or LMTP) server a relay delivers to in tests and benchmarks.
//!
//! It behaves like a real receiver when asked to: deferrals and rejections at chosen rates
//! (per recipient or per message, per domain), reply latency, dropped connections in the
//! middle of DATA, and magic local parts for tests. It checks every message `loadgen send`
//! made (id and checksum), counts delivered, duplicated and corrupted, and counts messages
//! per connection so a test can prove that a relay batches.

use crate::workload::{self, Integrity, Rng};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use ringpost::net::stream::{Conn, Stream};
use ringpost::smtp::address::Path;
use ringpost::smtp::data::DataScanner;
use ringpost::smtp::parser::{frame, parse_command, skip_line, Command, Frame};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest command line the sink accepts (generous: it is a test peer, not a gatekeeper).
const LINE_BYTES_MAX: usize = 4096;
/// How often shards look at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailAt {
    Rcpt,
    Data,
}

#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub listen: Vec<SocketAddr>,
    pub shards: usize,
    pub hostname: String,
    pub lmtp: bool,
    pub starttls: bool,
    /// A given certificate and key (PEM), instead of a generated one.
    pub cert: Option<(PathBuf, PathBuf)>,
    pub disabled: HashSet<String>,
    /// Offer CHUNKING, but answer BDAT as a command not implemented (a broken next hop).
    pub bdat_unimplemented: bool,
    pub defer_rate: f64,
    pub reject_rate: f64,
    pub fail_at: FailAt,
    pub domain_defer: HashMap<String, f64>,
    pub domain_reject: HashMap<String, f64>,
    pub latency: Duration,
    /// Delay before each write of replies: a next hop this round trip away.
    pub rtt: Duration,
    pub slow_latency: Duration,
    pub disconnect_rate: f64,
    pub max_message_bytes: u64,
    pub record: Option<PathBuf>,
    pub seed: u64,
    pub timeout: Duration,
}

/// The sink's totals (also its JSON report).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkStats {
    pub connections: u64,
    pub tls_sessions: u64,
    pub transactions: u64,
    /// Messages whose content was accepted (a 2xx after DATA/BDAT LAST).
    pub messages: u64,
    /// Of those, the ones whose content came in BDAT chunks.
    pub bdat_messages: u64,
    /// Recipients of accepted messages.
    pub recipients: u64,
    pub bytes: u64,
    /// Distinct loadgen messages received intact.
    pub delivered_messages: u64,
    /// Distinct (message, recipient) pairs received intact.
    pub delivered_recipients: u64,
    /// A (message, recipient) pair received again.
    pub duplicated: u64,
    pub corrupted: u64,
    /// Messages without loadgen headers.
    pub foreign: u64,
    pub bare_newline: u64,
    pub rcpt_deferred: u64,
    pub rcpt_rejected: u64,
    pub data_deferred: u64,
    pub data_rejected: u64,
    pub disconnects: u64,
    pub max_messages_per_connection: u64,
    pub connections_with_messages: u64,
    /// Octets a client sent after STARTTLS in the same packet (discarded).
    pub starttls_injected_bytes: u64,
    /// Accepted recipients by domain.
    pub per_domain: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    tls_sessions: AtomicU64,
    transactions: AtomicU64,
    messages: AtomicU64,
    bdat_messages: AtomicU64,
    recipients: AtomicU64,
    bytes: AtomicU64,
    corrupted: AtomicU64,
    foreign: AtomicU64,
    bare_newline: AtomicU64,
    rcpt_deferred: AtomicU64,
    rcpt_rejected: AtomicU64,
    data_deferred: AtomicU64,
    data_rejected: AtomicU64,
    disconnects: AtomicU64,
    max_per_connection: AtomicU64,
    connections_with_messages: AtomicU64,
    starttls_injected_bytes: AtomicU64,
    record_seq: AtomicU64,
}

#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    pairs: HashSet<(String, String)>,
    duplicated: u64,
    per_domain: BTreeMap<String, u64>,
    tempfail: HashMap<String, u32>,
}

pub struct Sink {
    cfg: SinkConfig,
    c: Counters,
    seen: Mutex<Seen>,
    tls: Option<Arc<rustls::ServerConfig>>,
    pub stop: AtomicBool,
}

impl Sink {
    pub fn new(cfg: SinkConfig) -> Result<Arc<Sink>, String> {
        let tls = match (&cfg.cert, cfg.starttls) {
            (_, false) => None,
            (Some((cert, key)), true) => Some(ringpost::tls::server_config(cert, key)?),
            (None, true) => Some(crate::tls::sink_server_config(std::slice::from_ref(
                &cfg.hostname,
            ))?),
        };
        if let Some(dir) = &cfg.record {
            std::fs::create_dir_all(dir).map_err(|e| format!("--record {}: {e}", dir.display()))?;
        }
        Ok(Arc::new(Sink {
            cfg,
            c: Counters::default(),
            seen: Mutex::default(),
            tls,
            stop: AtomicBool::new(false),
        }))
    }

    pub fn stats(&self) -> SinkStats {
        let c = &self.c;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        SinkStats {
            connections: g(&c.connections),
            tls_sessions: g(&c.tls_sessions),
            transactions: g(&c.transactions),
            messages: g(&c.messages),
            bdat_messages: g(&c.bdat_messages),
            recipients: g(&c.recipients),
            bytes: g(&c.bytes),
            delivered_messages: seen.ids.len() as u64,
            delivered_recipients: seen.pairs.len() as u64,
            duplicated: seen.duplicated,
            corrupted: g(&c.corrupted),
            foreign: g(&c.foreign),
            bare_newline: g(&c.bare_newline),
            rcpt_deferred: g(&c.rcpt_deferred),
            rcpt_rejected: g(&c.rcpt_rejected),
            data_deferred: g(&c.data_deferred),
            data_rejected: g(&c.data_rejected),
            disconnects: g(&c.disconnects),
            max_messages_per_connection: g(&c.max_per_connection),
            connections_with_messages: g(&c.connections_with_messages),
            starttls_injected_bytes: g(&c.starttls_injected_bytes),
            per_domain: seen.per_domain.clone(),
        }
    }

    /// Binds every listener on every shard, then serves until `stop` is set.
    pub fn run(self: &Arc<Self>, ready: impl FnOnce()) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut handles = Vec::new();
        for k in 0..self.cfg.shards.max(1) {
            let sink = Arc::clone(self);
            let tx = tx.clone();
            let h = LocalExecutorBuilder::new(Placement::Unbound)
                .name(&format!("sink-{k}"))
                .spawn(move || async move { sink.shard(k, tx).await })
                .map_err(|e| format!("cannot start sink shard {k}: {e}"))?;
            handles.push(h);
        }
        drop(tx);
        for _ in 0..handles.len() {
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    self.stop.store(true, Ordering::SeqCst);
                    return Err(e);
                }
                Err(_) => return Err("a sink shard died at start".into()),
            }
        }
        ready();
        for h in handles {
            h.join().map_err(|e| format!("sink shard failed: {e}"))?;
        }
        Ok(())
    }

    async fn shard(self: Arc<Self>, k: usize, tx: std::sync::mpsc::Sender<Result<(), String>>) {
        let mut listeners = Vec::new();
        for addr in &self.cfg.listen {
            match TcpListener::bind(addr) {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot listen on {addr}: {e}")));
                    return;
                }
            }
        }
        let _ = tx.send(Ok(()));
        let seed = self.cfg.seed ^ (k as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
        let acceptors: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let sink = Arc::clone(&self);
                glommio::spawn_local(async move {
                    let mut rng = Rng::new(seed ^ i as u64);
                    loop {
                        match l.accept().await {
                            Ok(s) => {
                                let session_seed = rng.next_u64();
                                glommio::spawn_local(Arc::clone(&sink).serve(s, session_seed))
                                    .detach();
                            }
                            Err(e) => {
                                log::warn!("sink accept: {e}");
                                glommio::timer::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        while !self.stop.load(Ordering::Relaxed) {
            glommio::timer::sleep(STOP_POLL).await;
        }
        for a in acceptors {
            a.cancel().await;
        }
    }

    async fn serve(self: Arc<Self>, tcp: TcpStream, seed: u64) {
        self.c.connections.fetch_add(1, Ordering::Relaxed);
        let _ = tcp.set_nodelay(true);
        let _ = tcp.set_read_timeout(Some(self.cfg.timeout));
        let _ = tcp.set_write_timeout(Some(self.cfg.timeout));
        let mut s = SinkSession {
            sink: &self,
            conn: Conn::new(Stream::Plain(tcp)),
            rng: Rng::new(seed),
            out: Vec::with_capacity(1024),
            replies: 0,
            extra_delay: Duration::ZERO,
            helo: false,
            tx: None,
            messages: 0,
            body: Vec::new(),
        };
        let _ = s.run().await;
    }
}

/// One transaction in progress.
struct Tx {
    from: String,
    rcpts: Vec<String>,
    /// The content will be dropped mid-DATA (disconnect rate).
    disconnect: bool,
}

enum Next {
    Continue,
    Close,
    StartTls,
    /// Hold the connection without replying (for timeout tests).
    Hang,
}

struct SinkSession<'a> {
    sink: &'a Sink,
    conn: Conn,
    rng: Rng,
    out: Vec<u8>,
    replies: u32,
    extra_delay: Duration,
    helo: bool,
    tx: Option<Tx>,
    messages: u64,
    body: Vec<u8>,
}

impl SinkSession<'_> {
    fn reply(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self.replies += 1;
    }

    /// The failure rates for a domain (its own, or the global ones) say: reject
    /// (Some(true)), defer (Some(false)), or accept (None).
    fn rate_verdict(&mut self, domain: &str) -> Option<bool> {
        let cfg = &self.sink.cfg;
        let reject = cfg
            .domain_reject
            .get(domain)
            .copied()
            .unwrap_or(cfg.reject_rate);
        let defer = cfg
            .domain_defer
            .get(domain)
            .copied()
            .unwrap_or(cfg.defer_rate);
        if self.chance(reject) {
            Some(true)
        } else if self.chance(defer) {
            Some(false)
        } else {
            None
        }
    }

    fn chance(&mut self, rate: f64) -> bool {
        rate > 0.0 && (self.rng.below(1 << 30) as f64) < rate * f64::from(1u32 << 30)
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let delay = self.sink.cfg.latency * self.replies + self.extra_delay + self.sink.cfg.rtt;
        if !delay.is_zero() {
            glommio::timer::sleep(delay).await;
        }
        self.replies = 0;
        self.extra_delay = Duration::ZERO;
        let out = std::mem::take(&mut self.out);
        let r = self.conn.send(&out).await;
        self.out = out;
        self.out.clear();
        r
    }

    async fn run(&mut self) -> io::Result<()> {
        let greeting = format!(
            "220 {} {} loadgen sink",
            self.sink.cfg.hostname,
            if self.sink.cfg.lmtp { "LMTP" } else { "ESMTP" }
        );
        self.reply(&greeting);
        self.flush().await?;
        loop {
            match self.process().await? {
                Next::Continue => {}
                Next::Close => {
                    self.flush().await?;
                    return Ok(());
                }
                Next::Hang => {
                    self.out.clear();
                    while self.conn.fill().await? {}
                    return Ok(());
                }
                Next::StartTls => {
                    self.flush().await?;
                    let injected = self.conn.buffered().len() as u64;
                    self.sink
                        .c
                        .starttls_injected_bytes
                        .fetch_add(injected, Ordering::Relaxed);
                    let tls = self
                        .sink
                        .tls
                        .clone()
                        .ok_or_else(|| io::Error::other("no TLS"))?;
                    let plain = std::mem::replace(&mut self.conn.stream, Stream::Gone);
                    self.conn = Conn::new(plain.upgrade_server(tls).await?);
                    self.sink.c.tls_sessions.fetch_add(1, Ordering::Relaxed);
                    self.helo = false;
                    self.tx = None;
                    continue;
                }
            }
            self.flush().await?;
            if !self.conn.fill().await? {
                return Ok(());
            }
        }
    }

    /// Handles every complete command in the buffer.
    async fn process(&mut self) -> io::Result<Next> {
        loop {
            let line = match frame(self.conn.buffered(), LINE_BYTES_MAX) {
                Ok(Frame::Incomplete) => return Ok(Next::Continue),
                Ok(Frame::Line(line, n)) => {
                    let line = line.to_vec();
                    self.conn.consume(n);
                    line
                }
                Err(_) => {
                    let (n, _) = skip_line(self.conn.buffered());
                    self.conn.consume(n);
                    self.reply("500 5.5.2 Error: bad command line");
                    continue;
                }
            };
            match self.command(&line).await? {
                Next::Continue => {}
                other => return Ok(other),
            }
        }
    }

    async fn command(&mut self, line: &[u8]) -> io::Result<Next> {
        let lhlo = line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"LHLO ");
        let parsed = if lhlo {
            Ok(Command::Ehlo(&line[5..]))
        } else {
            parse_command(line)
        };
        let cmd = match parsed {
            Ok(c) => c,
            Err(reply) => {
                self.reply(reply);
                return Ok(Next::Continue);
            }
        };
        let cfg = &self.sink.cfg;
        match cmd {
            Command::Ehlo(_) if cfg.lmtp != lhlo => {
                self.reply("500 5.5.1 Error: use LHLO for LMTP, EHLO for SMTP")
            }
            Command::Ehlo(_) if cfg.disabled.contains("ehlo") => {
                self.reply("502 5.5.2 Error: command not recognized")
            }
            Command::Ehlo(_) => {
                self.helo = true;
                self.tx = None;
                let mut caps = vec![cfg.hostname.clone()];
                for (ext, text) in [
                    ("pipelining", "PIPELINING".to_string()),
                    ("size", format!("SIZE {}", cfg.max_message_bytes)),
                    ("8bitmime", "8BITMIME".into()),
                    ("enhancedstatuscodes", "ENHANCEDSTATUSCODES".into()),
                    ("smtputf8", "SMTPUTF8".into()),
                    ("chunking", "CHUNKING".into()),
                    ("dsn", "DSN".into()),
                ] {
                    if !cfg.disabled.contains(ext) {
                        caps.push(text);
                    }
                }
                if self.sink.tls.is_some()
                    && !self.conn.stream.is_tls()
                    && !cfg.disabled.contains("starttls")
                {
                    caps.push("STARTTLS".into());
                }
                for (i, c) in caps.iter().enumerate() {
                    let sep = if i + 1 == caps.len() { ' ' } else { '-' };
                    let l = format!("250{sep}{c}");
                    self.out.extend_from_slice(l.as_bytes());
                    self.out.extend_from_slice(b"\r\n");
                }
                self.replies += 1;
            }
            Command::Helo(_) if cfg.lmtp => self.reply("500 5.5.1 Error: use LHLO"),
            Command::Helo(_) => {
                self.helo = true;
                self.tx = None;
                let l = format!("250 {}", cfg.hostname);
                self.reply(&l);
            }
            Command::StartTls if self.sink.tls.is_some() && !self.conn.stream.is_tls() => {
                self.reply("220 2.0.0 Ready to start TLS");
                return Ok(Next::StartTls);
            }
            Command::StartTls => self.reply("502 5.5.1 Error: STARTTLS not available"),
            Command::Mail(path, _) if self.helo && self.tx.is_none() => {
                let from = match path {
                    Path::Mailbox(m) => m.to_string_lossless(),
                    _ => String::new(),
                };
                let disconnect = self.chance(cfg.disconnect_rate);
                self.tx = Some(Tx {
                    from,
                    rcpts: Vec::new(),
                    disconnect,
                });
                self.body.clear();
                self.sink.c.transactions.fetch_add(1, Ordering::Relaxed);
                self.reply("250 2.1.0 Ok");
            }
            Command::Mail(..) => self.reply("503 5.5.1 Error: bad sequence of commands"),
            Command::Rcpt(path, _) if self.tx.is_some() => self.rcpt(path),
            Command::Rcpt(..) => self.reply("503 5.5.1 Error: need MAIL command"),
            Command::Data => return self.data().await,
            Command::Bdat { .. } if self.sink.cfg.bdat_unimplemented => {
                // As a server without BDAT would: its chunk is read as command lines.
                self.reply("502 5.5.1 Error: command not implemented")
            }
            Command::Bdat { size, last } => return self.bdat(size, last).await,
            Command::Rset => {
                self.tx = None;
                self.reply("250 2.0.0 Ok");
            }
            Command::Noop => self.reply("250 2.0.0 Ok"),
            Command::Quit => {
                self.reply("221 2.0.0 Bye");
                return Ok(Next::Close);
            }
            _ => self.reply("502 5.5.1 Error: command not implemented"),
        }
        Ok(Next::Continue)
    }

    fn rcpt(&mut self, path: Path<'_>) {
        let (addr, local, domain) = match path {
            Path::Mailbox(m) => {
                let local = String::from_utf8_lossy(m.local).to_ascii_lowercase();
                let domain = String::from_utf8_lossy(m.domain).to_ascii_lowercase();
                (m.to_string_lossless(), local, domain)
            }
            _ => (
                "postmaster".to_string(),
                "postmaster".to_string(),
                String::new(),
            ),
        };
        let cfg = &self.sink.cfg;
        let c = &self.sink.c;
        if local == "reject" {
            c.rcpt_rejected.fetch_add(1, Ordering::Relaxed);
            return self.reply("550 5.1.1 Recipient rejected (reject@)");
        }
        if local == "defer" {
            c.rcpt_deferred.fetch_add(1, Ordering::Relaxed);
            return self.reply("451 4.2.0 Recipient deferred (defer@)");
        }
        if let Some(n) = local
            .strip_prefix("tempfail-")
            .and_then(|n| n.parse::<u32>().ok())
        {
            let mut seen = self.sink.seen.lock().unwrap_or_else(|e| e.into_inner());
            let tries = seen.tempfail.entry(addr.to_ascii_lowercase()).or_default();
            if *tries < n {
                *tries += 1;
                drop(seen);
                c.rcpt_deferred.fetch_add(1, Ordering::Relaxed);
                return self.reply("451 4.2.0 Try again later (tempfail-N@)");
            }
        }
        if local == "slow" {
            self.extra_delay += cfg.slow_latency;
        }
        if local == "bye" {
            // A receiver that gives up in the middle of the session.
            c.rcpt_deferred.fetch_add(1, Ordering::Relaxed);
            return self.reply("421 4.3.2 Service shutting down (bye@)");
        }
        if cfg.fail_at == FailAt::Rcpt {
            let verdict = self.rate_verdict(&domain);
            if verdict == Some(true) {
                c.rcpt_rejected.fetch_add(1, Ordering::Relaxed);
                return self.reply("550 5.1.1 Recipient rejected (reject rate)");
            }
            if verdict == Some(false) {
                c.rcpt_deferred.fetch_add(1, Ordering::Relaxed);
                return self.reply("451 4.2.0 Recipient deferred (defer rate)");
            }
        }
        if let Some(tx) = self.tx.as_mut() {
            tx.rcpts.push(addr);
        }
        self.reply("250 2.1.5 Ok");
    }

    async fn data(&mut self) -> io::Result<Next> {
        let ready = self.tx.as_ref().is_some_and(|t| !t.rcpts.is_empty());
        if !ready {
            self.reply("554 5.5.1 Error: no valid recipients");
            return Ok(Next::Continue);
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>");
        self.flush().await?;
        let mut scanner = DataScanner::new(self.sink.cfg.max_message_bytes);
        self.body.clear();
        let disconnect = self.tx.as_ref().is_some_and(|t| t.disconnect);
        loop {
            let (used, end) = scanner.feed(self.conn.buffered(), &mut self.body);
            self.conn.consume(used);
            if disconnect && !self.body.is_empty() {
                // Drop the connection in the middle of the content.
                self.sink.c.disconnects.fetch_add(1, Ordering::Relaxed);
                return Err(io::Error::other("disconnect in DATA (rate)"));
            }
            if let Some(end) = end {
                if end.bare_newline {
                    self.sink.c.bare_newline.fetch_add(1, Ordering::Relaxed);
                }
                if end.over_limit {
                    self.tx = None;
                    self.reply("552 5.3.4 Message too big");
                    return Ok(Next::Continue);
                }
                return self.content_done(false);
            }
            if !self.conn.fill().await? {
                return Ok(Next::Close);
            }
        }
    }

    async fn bdat(&mut self, size: u64, last: bool) -> io::Result<Next> {
        let valid = self.tx.as_ref().is_some_and(|t| !t.rcpts.is_empty());
        let mut remaining = size;
        if valid && self.tx.as_ref().is_some_and(|t| t.disconnect) && size > 0 {
            self.sink.c.disconnects.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::other("disconnect in BDAT (rate)"));
        }
        while remaining > 0 {
            if self.conn.buffered().is_empty() && !self.conn.fill().await? {
                return Ok(Next::Close);
            }
            let take = remaining.min(self.conn.buffered().len() as u64) as usize;
            if valid {
                let chunk = self.conn.buffered()[..take].to_vec();
                self.body.extend_from_slice(&chunk);
            }
            self.conn.consume(take);
            remaining -= take as u64;
        }
        if !valid {
            self.reply("503 5.5.1 Error: no valid recipients");
            return Ok(Next::Continue);
        }
        if !last {
            self.reply("250 2.0.0 Ok: chunk");
            return Ok(Next::Continue);
        }
        let r = self.content_done(true);
        self.body.clear();
        r
    }

    /// The content of the transaction is complete (`bdat`: it came in BDAT chunks):
    /// decide, verify, count, record.
    fn content_done(&mut self, bdat: bool) -> io::Result<Next> {
        let Some(tx) = self.tx.take() else {
            return Ok(Next::Continue);
        };
        let cfg = &self.sink.cfg;
        let c = &self.sink.c;
        let has = |magic: &str| {
            tx.rcpts.iter().any(|r| {
                r.split('@')
                    .next()
                    .is_some_and(|l| l.eq_ignore_ascii_case(magic))
            })
        };
        if has("disconnect") {
            c.disconnects.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::other("disconnect after DATA (disconnect@)"));
        }
        if has("hang") {
            return Ok(Next::Hang);
        }
        if has("garbage") {
            // Not an SMTP reply at all.
            self.out
                .extend_from_slice(b"\x00\xffgarbage without a code\r\n");
            self.replies += 1;
            return Ok(Next::Continue);
        }
        if has("reject-data") && !cfg.lmtp {
            c.data_rejected.fetch_add(1, Ordering::Relaxed);
            self.reply("554 5.6.0 Message rejected (reject-data@)");
            return Ok(Next::Continue);
        }
        if has("defer-data") && !cfg.lmtp {
            c.data_deferred.fetch_add(1, Ordering::Relaxed);
            self.reply("451 4.3.0 Message deferred (defer-data@)");
            return Ok(Next::Continue);
        }
        if cfg.fail_at == FailAt::Data {
            let domain = tx
                .rcpts
                .first()
                .and_then(|r| r.rsplit('@').next())
                .unwrap_or_default()
                .to_ascii_lowercase();
            let verdict = self.rate_verdict(&domain);
            if verdict == Some(true) {
                c.data_rejected.fetch_add(1, Ordering::Relaxed);
                self.reply("554 5.6.0 Message rejected (reject rate)");
                return Ok(Next::Continue);
            }
            if verdict == Some(false) {
                c.data_deferred.fetch_add(1, Ordering::Relaxed);
                self.reply("451 4.3.0 Message deferred (defer rate)");
                return Ok(Next::Continue);
            }
        }
        // LMTP: one reply per recipient (RFC 2033), magic local parts per recipient.
        let accepted: Vec<String> = if cfg.lmtp {
            let mut ok = Vec::new();
            for r in &tx.rcpts {
                let local = r.split('@').next().unwrap_or_default().to_ascii_lowercase();
                let line = match local.as_str() {
                    "reject-data" => {
                        c.data_rejected.fetch_add(1, Ordering::Relaxed);
                        format!("550 5.1.1 <{r}> rejected (reject-data@)")
                    }
                    "defer-data" => {
                        c.data_deferred.fetch_add(1, Ordering::Relaxed);
                        format!("451 4.2.0 <{r}> deferred (defer-data@)")
                    }
                    _ => {
                        ok.push(r.clone());
                        format!("250 2.1.5 <{r}> delivered")
                    }
                };
                self.reply(&line);
            }
            ok
        } else {
            let n = c.messages.load(Ordering::Relaxed);
            self.reply(&format!("250 2.0.0 Ok: queued as sink-{n}"));
            tx.rcpts.clone()
        };
        if accepted.is_empty() {
            return Ok(Next::Continue);
        }
        self.messages += 1;
        if self.messages == 1 {
            c.connections_with_messages.fetch_add(1, Ordering::Relaxed);
        }
        c.max_per_connection
            .fetch_max(self.messages, Ordering::Relaxed);
        c.messages.fetch_add(1, Ordering::Relaxed);
        c.bdat_messages
            .fetch_add(u64::from(bdat), Ordering::Relaxed);
        c.recipients
            .fetch_add(accepted.len() as u64, Ordering::Relaxed);
        c.bytes.fetch_add(self.body.len() as u64, Ordering::Relaxed);
        let integrity = workload::verify(&self.body);
        {
            let mut seen = self.sink.seen.lock().unwrap_or_else(|e| e.into_inner());
            for r in &accepted {
                let domain = r
                    .rsplit('@')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                *seen.per_domain.entry(domain).or_default() += 1;
            }
            match &integrity {
                Integrity::Intact(id) => {
                    seen.ids.insert(id.clone());
                    for r in &accepted {
                        if !seen.pairs.insert((id.clone(), r.to_ascii_lowercase())) {
                            seen.duplicated += 1;
                        }
                    }
                }
                Integrity::Corrupted(_) => {
                    c.corrupted.fetch_add(1, Ordering::Relaxed);
                }
                Integrity::Foreign => {
                    c.foreign.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(dir) = &cfg.record {
            self.record(dir, &tx.from, &accepted, &integrity, bdat)?;
        }
        Ok(Next::Continue)
    }

    fn record(
        &self,
        dir: &std::path::Path,
        from: &str,
        rcpts: &[String],
        integrity: &Integrity,
        bdat: bool,
    ) -> io::Result<()> {
        let seq = self.sink.c.record_seq.fetch_add(1, Ordering::Relaxed);
        let integrity = match integrity {
            Integrity::Intact(_) => "intact",
            Integrity::Corrupted(_) => "corrupted",
            Integrity::Foreign => "foreign",
        };
        let envelope = serde_json::json!({
            "seq": seq,
            "mail_from": from,
            "rcpt_to": rcpts,
            "size": self.body.len(),
            "tls": self.conn.stream.is_tls(),
            "bdat": bdat,
            "integrity": integrity,
        });
        std::fs::write(dir.join(format!("{seq:08}.eml")), &self.body)?;
        std::fs::write(dir.join(format!("{seq:08}.json")), envelope.to_string())
    }
}
