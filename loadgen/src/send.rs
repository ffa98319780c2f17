//! `loadgen send`: drive SMTP load at one target from glommio shards.
//!
//! Closed loop: each connection sends messages back to back over a persistent session.
//! Open loop (`--rate`): each shard schedules messages at fixed intervals and a message's
//! latency counts from its scheduled time, so a slow server cannot hide its queueing
//! (no coordinated omission).

use crate::report::{self, Percentiles, SendReport};
use crate::workload::{self, Body, Rng, Weighted};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use ringpost::net::stream::{Conn, Reply, Stream};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// After a failed connect, wait this long before the next try (bounded retry rate).
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// A connection that failed this many times in a row gives up (the target is down).
const CONNECT_FAILURES_MAX: u32 = 30;

#[derive(Debug, Clone)]
pub struct SendConfig {
    pub target: SocketAddr,
    pub connections: usize,
    pub rate: Option<f64>,
    pub messages: Option<u64>,
    pub duration: Option<Duration>,
    pub shards: usize,
    pub sizes: Weighted<usize>,
    pub rcpts_per_message: usize,
    pub domains: Weighted<String>,
    pub pipelining: bool,
    pub starttls: bool,
    pub one_message_per_connection: bool,
    pub seed: u64,
    pub from: String,
    pub rcpt_local: Option<String>,
    pub helo: String,
    pub timeout: Duration,
}

/// Counters shared across shards for the live progress line.
#[derive(Default)]
pub struct Live {
    pub accepted: AtomicU64,
    pub failed: AtomicU64,
    pub errors: AtomicU64,
    pub latency: Mutex<Option<Histogram<u64>>>,
}

struct Shared {
    cfg: SendConfig,
    next: AtomicU64,
    limit: u64,
    deadline: Option<Instant>,
    live: Arc<Live>,
}

impl Shared {
    /// Claims the next message of the run (closed loop), or None when the run is over.
    fn claim(&self) -> Option<u64> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (n < self.limit).then_some(n)
    }
}

/// What one shard measured.
#[derive(Default)]
struct Tally {
    attempted: u64,
    accepted: u64,
    failed: u64,
    rcpts_accepted: u64,
    bytes: u64,
    replies: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    connect: Option<Histogram<u64>>,
    message: Option<Histogram<u64>>,
    session: Option<Histogram<u64>>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            connect: Some(report::histogram()),
            message: Some(report::histogram()),
            session: Some(report::histogram()),
            ..Tally::default()
        }
    }

    fn error(&mut self, what: impl Into<String>) {
        *self.errors.entry(what.into()).or_default() += 1;
    }

    fn merge(&mut self, o: Tally) {
        self.attempted += o.attempted;
        self.accepted += o.accepted;
        self.failed += o.failed;
        self.rcpts_accepted += o.rcpts_accepted;
        self.bytes += o.bytes;
        for (k, v) in o.replies {
            *self.replies.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (mine, theirs) in [
            (&mut self.connect, o.connect),
            (&mut self.message, o.message),
            (&mut self.session, o.session),
        ] {
            if let (Some(m), Some(t)) = (mine.as_mut(), theirs) {
                let _ = m.add(&t);
            }
        }
    }
}

pub struct Outcome {
    pub report: SendReport,
    pub message_histogram: Histogram<u64>,
}

pub fn run(cfg: SendConfig, live: Arc<Live>) -> Result<Outcome, String> {
    let limit = cfg.messages.unwrap_or(u64::MAX);
    let shards = cfg.shards.max(1);
    let started = Instant::now();
    let shared = Arc::new(Shared {
        deadline: cfg.duration.map(|d| started + d),
        cfg: cfg.clone(),
        next: AtomicU64::new(0),
        limit,
        live,
    });
    let mut handles = Vec::new();
    for k in 0..shards {
        // Connections split as evenly as possible; shard k gets the remainder first.
        let conns = cfg.connections / shards + usize::from(k < cfg.connections % shards);
        let shared = Arc::clone(&shared);
        let h = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("send-{k}"))
            .spawn(move || async move { shard(k, conns, shared).await })
            .map_err(|e| format!("cannot start shard {k}: {e}"))?;
        handles.push(h);
    }
    let mut total = Tally::new();
    for h in handles {
        total.merge(h.join().map_err(|e| format!("shard failed: {e}"))?);
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let message = total.message.take().unwrap_or_else(report::histogram);
    let mode = match cfg.rate {
        Some(r) => format!("open loop, {r} msgs/s"),
        None => "closed loop".into(),
    };
    let report = SendReport {
        seed: cfg.seed,
        target: cfg.target.to_string(),
        mode,
        connections: cfg.connections,
        shards,
        elapsed_s,
        messages_attempted: total.attempted,
        messages_accepted: total.accepted,
        messages_failed: total.failed,
        recipients_accepted: total.rcpts_accepted,
        bytes_sent: total.bytes,
        msgs_per_s: total.accepted as f64 / elapsed_s,
        mb_per_s: total.bytes as f64 / elapsed_s / 1e6,
        connect: Percentiles::of(total.connect.as_ref().unwrap_or(&report::histogram())),
        message: Percentiles::of(&message),
        session: Percentiles::of(total.session.as_ref().unwrap_or(&report::histogram())),
        replies: total.replies,
        errors: total.errors,
    };
    Ok(Outcome {
        report,
        message_histogram: message,
    })
}

/// Per-shard state shared by its connection tasks.
struct ShardCtx {
    k: usize,
    shared: Arc<Shared>,
    tally: RefCell<Tally>,
    /// Open loop: scheduled start times waiting for a free connection.
    jobs: RefCell<VecDeque<Instant>>,
    ready: Semaphore,
    bodies: HashMap<usize, Body>,
    rng: RefCell<Rng>,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Latencies since the last push to the live histogram.
    recent: RefCell<Histogram<u64>>,
    /// Messages begun on this shard: the id's last part, unique within the shard.
    begun: std::cell::Cell<u64>,
}

async fn shard(k: usize, conns: usize, shared: Arc<Shared>) -> Tally {
    let cfg = &shared.cfg;
    let mut rng = Rng::new(cfg.seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let bodies = cfg
        .sizes
        .values()
        .map(|&size| (size, workload::make_body(size, &mut rng)))
        .collect();
    let tls = if cfg.starttls {
        crate::tls::client_config().ok()
    } else {
        None
    };
    let ctx = Rc::new(ShardCtx {
        k,
        shared: Arc::clone(&shared),
        tally: RefCell::new(Tally::new()),
        jobs: RefCell::new(VecDeque::new()),
        ready: Semaphore::new(0),
        bodies,
        rng: RefCell::new(rng),
        tls,
        recent: RefCell::new(report::histogram()),
        begun: std::cell::Cell::new(0),
    });
    let mut tasks = Vec::new();
    if let Some(rate) = cfg.rate {
        let per_shard = rate / cfg.shards.max(1) as f64;
        tasks.push(glommio::spawn_local(schedule(Rc::clone(&ctx), per_shard)));
    }
    for _ in 0..conns {
        tasks.push(glommio::spawn_local(connection(Rc::clone(&ctx))));
    }
    let reporter = glommio::spawn_local(push_live(Rc::clone(&ctx)));
    for t in tasks {
        t.await;
    }
    drop(reporter);
    flush_live(&ctx);
    match Rc::try_unwrap(ctx) {
        Ok(ctx) => ctx.tally.into_inner(),
        Err(ctx) => std::mem::replace(&mut *ctx.tally.borrow_mut(), Tally::new()),
    }
}

/// Open loop: enqueue one job per interval until the run's bound, then release waiters.
async fn schedule(ctx: Rc<ShardCtx>, per_second: f64) {
    let interval = Duration::from_secs_f64(1.0 / per_second.max(1e-3));
    let mut next = Instant::now();
    loop {
        let now = Instant::now();
        while next <= now {
            if ctx.shared.claim().is_none() {
                // Let the connections take what is queued before telling them to stop.
                while !ctx.jobs.borrow().is_empty() {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
                ctx.ready.close();
                return;
            }
            ctx.jobs.borrow_mut().push_back(next);
            ctx.ready.signal(1);
            next += interval;
        }
        glommio::timer::sleep(next - Instant::now()).await;
    }
}

/// The next message for a connection: its index-free start time, or None when done.
async fn next_job(ctx: &ShardCtx) -> Option<Instant> {
    if ctx.shared.cfg.rate.is_some() {
        ctx.ready.acquire(1).await.ok()?;
        ctx.jobs.borrow_mut().pop_front()
    } else {
        ctx.shared.claim().map(|_| Instant::now())
    }
}

async fn connection(ctx: Rc<ShardCtx>) {
    let mut pending: Option<Instant> = None;
    let mut failures = 0u32;
    loop {
        let job = match pending.take() {
            Some(j) => j,
            None => match next_job(&ctx).await {
                Some(j) => j,
                None => return,
            },
        };
        let session_start = Instant::now();
        let mut conn = match open(&ctx).await {
            Ok(conn) => conn,
            Err(e) => {
                ctx.tally
                    .borrow_mut()
                    .error(format!("connect: {}", e.kind()));
                ctx.shared.live.errors.fetch_add(1, Ordering::Relaxed);
                failures += 1;
                if failures >= CONNECT_FAILURES_MAX {
                    ctx.tally.borrow_mut().error("gave up: target unreachable");
                    return;
                }
                // The job waits for the next connection; its latency keeps counting.
                pending = Some(job);
                glommio::timer::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        failures = 0;
        let mut job = Some(job);
        let ok = loop {
            let Some(start) = job.take() else { break true };
            if let Err(e) = message(&ctx, &mut conn, start).await {
                ctx.tally.borrow_mut().error(format!("session: {e}"));
                ctx.shared.live.errors.fetch_add(1, Ordering::Relaxed);
                break false;
            }
            if ctx.shared.cfg.one_message_per_connection {
                break true;
            }
            job = next_job(&ctx).await;
        };
        if ok && quit(&ctx, &mut conn).await.is_ok() {
            report::record(
                ctx.tally.borrow_mut().session.as_mut().expect("histogram"),
                session_start.elapsed().as_micros() as u64,
            );
        }
        if !ctx.shared.cfg.one_message_per_connection && ok {
            return;
        }
    }
}

/// Connects, reads the greeting, says EHLO, and upgrades with STARTTLS when asked.
async fn open(ctx: &ShardCtx) -> io::Result<Conn> {
    let cfg = &ctx.shared.cfg;
    let t0 = Instant::now();
    let tcp = TcpStream::connect_timeout(cfg.target, cfg.timeout)
        .await
        .map_err(io::Error::from)?;
    report::record(
        ctx.tally.borrow_mut().connect.as_mut().expect("histogram"),
        t0.elapsed().as_micros() as u64,
    );
    tcp.set_read_timeout(Some(cfg.timeout))?;
    tcp.set_write_timeout(Some(cfg.timeout))?;
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn::new(Stream::Plain(tcp));
    expect(ctx, &mut conn, 220).await?;
    let ehlo = format!("EHLO {}\r\n", cfg.helo);
    conn.send(ehlo.as_bytes()).await?;
    let caps = expect(ctx, &mut conn, 250).await?;
    if cfg.starttls {
        if !caps.has_keyword("STARTTLS") {
            return Err(io::Error::other("STARTTLS not offered"));
        }
        conn.send(b"STARTTLS\r\n").await?;
        expect(ctx, &mut conn, 220).await?;
        let config = ctx
            .tls
            .clone()
            .ok_or_else(|| io::Error::other("no TLS config"))?;
        let stream = std::mem::replace(&mut conn.stream, Stream::Gone);
        conn = Conn::new(stream.upgrade_client(config, "sink.loadgen.test").await?);
        conn.send(ehlo.as_bytes()).await?;
        expect(ctx, &mut conn, 250).await?;
    }
    Ok(conn)
}

async fn quit(ctx: &ShardCtx, conn: &mut Conn) -> io::Result<()> {
    conn.send(b"QUIT\r\n").await?;
    let _ = read_reply(ctx, conn).await;
    Ok(())
}

async fn read_reply(ctx: &ShardCtx, conn: &mut Conn) -> io::Result<Reply> {
    let r = conn.reply().await?;
    *ctx.tally.borrow_mut().replies.entry(r.code).or_default() += 1;
    Ok(r)
}

async fn expect(ctx: &ShardCtx, conn: &mut Conn, code: u16) -> io::Result<Reply> {
    let r = read_reply(ctx, conn).await?;
    if r.code != code {
        return Err(io::Error::other(format!(
            "expected {code}, got {}",
            r.lines.last().map_or("", |l| l.as_str())
        )));
    }
    Ok(r)
}

/// One transaction. Ok even when the server refused the message (that is counted);
/// Err only when the session cannot go on.
async fn message(ctx: &ShardCtx, conn: &mut Conn, start: Instant) -> io::Result<()> {
    let cfg = &ctx.shared.cfg;
    let (size, rcpts) = {
        let mut rng = ctx.rng.borrow_mut();
        let size = *cfg.sizes.pick(&mut rng);
        let rcpts: Vec<String> = (0..cfg.rcpts_per_message)
            .map(|j| {
                let domain = cfg.domains.pick(&mut rng);
                match &cfg.rcpt_local {
                    Some(local) => format!("{local}@{domain}"),
                    None => format!("user{}@{domain}", rng.below(1_000_000) + j as u64),
                }
            })
            .collect();
        (size, rcpts)
    };
    let n = ctx.begun.get();
    ctx.begun.set(n + 1);
    let id = format!("{:x}-{}-{n}", cfg.seed, ctx.k);
    ctx.tally.borrow_mut().attempted += 1;
    let mut envelope = format!("MAIL FROM:<{}>\r\n", cfg.from);
    for r in &rcpts {
        envelope.push_str(&format!("RCPT TO:<{r}>\r\n"));
    }
    envelope.push_str("DATA\r\n");
    let mut accepted = 0u64;
    let data_reply = if cfg.pipelining {
        conn.send(envelope.as_bytes()).await?;
        let mail = read_reply(ctx, conn).await?;
        for _ in &rcpts {
            accepted += u64::from(read_reply(ctx, conn).await?.code / 100 == 2);
        }
        let data = read_reply(ctx, conn).await?;
        if mail.code != 250 {
            return finish(ctx, conn, start, false, 0).await;
        }
        data
    } else {
        let mut lines = envelope.split_inclusive("\r\n");
        conn.send(lines.next().unwrap_or_default().as_bytes())
            .await?;
        if read_reply(ctx, conn).await?.code != 250 {
            return finish(ctx, conn, start, false, 0).await;
        }
        for line in lines.by_ref().take(rcpts.len()) {
            conn.send(line.as_bytes()).await?;
            accepted += u64::from(read_reply(ctx, conn).await?.code / 100 == 2);
        }
        if accepted == 0 {
            return finish(ctx, conn, start, false, 0).await;
        }
        conn.send(b"DATA\r\n").await?;
        read_reply(ctx, conn).await?
    };
    if data_reply.code != 354 {
        return finish(ctx, conn, start, false, 0).await;
    }
    let body = &ctx.bodies[&size];
    let mut wire = Vec::with_capacity(body.bytes.len() + 512);
    workload::headers(&mut wire, &id, &cfg.from, &rcpts[0], body.checksum);
    wire.extend_from_slice(&body.bytes);
    wire.extend_from_slice(b".\r\n");
    conn.send(&wire).await?;
    ctx.tally.borrow_mut().bytes += wire.len() as u64;
    let done = read_reply(ctx, conn).await?;
    finish(ctx, conn, start, done.code / 100 == 2, accepted).await
}

async fn finish(
    ctx: &ShardCtx,
    conn: &mut Conn,
    start: Instant,
    ok: bool,
    rcpts: u64,
) -> io::Result<()> {
    let us = start.elapsed().as_micros() as u64;
    if ok {
        let mut t = ctx.tally.borrow_mut();
        t.accepted += 1;
        t.rcpts_accepted += rcpts;
        report::record(t.message.as_mut().expect("histogram"), us);
        report::record(&mut ctx.recent.borrow_mut(), us);
        ctx.shared.live.accepted.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    ctx.tally.borrow_mut().failed += 1;
    ctx.shared.live.failed.fetch_add(1, Ordering::Relaxed);
    // Start the next transaction clean.
    conn.send(b"RSET\r\n").await?;
    read_reply(ctx, conn).await.map(|_| ())
}

async fn push_live(ctx: Rc<ShardCtx>) {
    loop {
        glommio::timer::sleep(Duration::from_millis(500)).await;
        flush_live(&ctx);
    }
}

fn flush_live(ctx: &ShardCtx) {
    let mut recent = ctx.recent.borrow_mut();
    if recent.is_empty() {
        return;
    }
    if let Ok(mut live) = ctx.shared.live.latency.lock() {
        let h = live.get_or_insert_with(report::histogram);
        let _ = h.add(&*recent);
    }
    recent.reset();
}
