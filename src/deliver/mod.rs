//! Delivery on the shard that owns a site: a ready queue per site, a pool of outbound
//! connections that grows with the queue (up to `max_connections_per_host`) and shrinks
//! after `idle_timeout`, many messages per connection, all of a message's recipients for
//! the site in one transaction. Outcomes go back, one report per transaction with a result
//! per recipient, to the shard whose log holds the message.

pub mod bounce;
pub mod qmgr;
pub mod wheel;

use crate::config::{Delivery as DeliveryConfig, OutboundTls};
use crate::net::stream::{Conn, Stream};
use crate::queue::record::{OutcomeKind, QueueId};
use crate::route::dns::{self, Answer, Resolver};
use crate::route::{Protocol, Site};
use crate::shard::local::Notify;
use crate::smtp::client::{
    self, Capabilities, Disposition, Failure, OutEnvelope, OutRcpt, Reply, Step, Transaction,
};
use crate::smtp::data;
use crate::smtp::parser::Ret;
use glommio::io::BufferedFile;
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Open segment files kept per shard for reading message content.
const OPEN_SEGMENTS_MAX: usize = 64;

/// The sweep's period: mail left for connections about to chain waits at most about two
/// of these (nothing taken from the site's queue between two sweeps) before an idle or a
/// new connection takes it: a next hop that stalls its reply to DATA holds up nothing else
/// for long.
const CHAIN_WAIT_MAX: Duration = Duration::from_secs(1);

/// One message's recipients for one site: what the owner shard needs to deliver it.
#[derive(Debug, Clone)]
pub struct Job {
    /// The shard whose log holds the message (a mesh peer index).
    pub origin: usize,
    pub id: QueueId,
    pub segment: Arc<PathBuf>,
    pub content_offset: u64,
    pub content_len: u64,
    pub sender: String,
    pub smtputf8: bool,
    pub eight_bit: bool,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    pub site: Arc<Site>,
    pub rcpts: Vec<JobRcpt>,
}

#[derive(Debug, Clone)]
pub struct JobRcpt {
    pub index: u32,
    pub address: String,
    pub notify: Option<u8>,
    pub orcpt: Option<String>,
}

/// The results of one transaction (or one decision) for recipients of one message, for the
/// message's log shard: one report, one cross-shard message and one task per transaction,
/// whatever the recipient count.
#[derive(Debug, Clone)]
pub struct Report {
    pub origin: usize,
    pub id: QueueId,
    /// The host that answered, for the DSN's Remote-MTA (shared with its connection: no
    /// copy per transaction).
    pub remote: Option<Arc<str>>,
    /// The next hop took the DSN parameters: success notices are its business now.
    pub next_hop_dsn: bool,
    pub rcpts: Vec<RcptResult>,
}

/// One recipient's result within a [`Report`].
#[derive(Debug, Clone)]
pub struct RcptResult {
    pub index: u32,
    pub kind: OutcomeKind,
    pub reply: String,
}

impl Report {
    /// The same result for each recipient in `indexes` (a job that cannot go, a route
    /// that failed, an operator's bounce).
    pub fn all(
        origin: usize,
        id: QueueId,
        indexes: impl IntoIterator<Item = u32>,
        kind: OutcomeKind,
        reply: &str,
    ) -> Report {
        Report {
            origin,
            id,
            remote: None,
            next_hop_dsn: false,
            rcpts: indexes
                .into_iter()
                .map(|index| RcptResult {
                    index,
                    kind,
                    reply: reply.to_string(),
                })
                .collect(),
        }
    }
}

/// What crosses between shards.
#[derive(Debug)]
pub enum Mail {
    Deliver(Job),
    Report(Report),
    /// ETRN: every shard retries its deferred mail for this domain now.
    Flush(String),
    /// An operator's command for one message; the shard whose log holds it acts.
    Admin(AdminOp, QueueId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminOp {
    Hold,
    Release,
    Delete,
    Bounce,
}

struct SiteQueue {
    site: Arc<Site>,
    ready: RefCell<VecDeque<Job>>,
    work: Notify,
    connections: Cell<u32>,
    idle: Cell<u32>,
    /// Connections whose envelope is out and whose content is not yet written: each will
    /// look at `ready` before that write and chain the next message behind its content.
    chainers: Cell<u32>,
    /// Messages taken from `ready` since the last sweep (a count: no clock read per
    /// message).
    taken_since_sweep: Cell<u64>,
    /// Connections opened so far: which equal-preference host the next one starts at.
    opened: Cell<usize>,
    /// A host of the site offered CHUNKING and refused BDAT as a command: DATA only.
    chunking_refused: Cell<bool>,
}

/// Counters for the operator.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeliveryStats {
    pub connections: u64,
    pub transactions: u64,
    /// Transactions whose envelope went out behind the previous message's content.
    pub chained: u64,
    /// Transactions whose content went out as one BDAT chunk behind their envelope.
    pub chunked: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub failed: u64,
}

pub struct Deliverer {
    cfg: DeliveryConfig,
    hostname: String,
    resolver: Rc<Resolver>,
    tls: Option<Arc<rustls::ClientConfig>>,
    verified: Option<Arc<rustls::ClientConfig>>,
    sites: RefCell<HashMap<String, Rc<SiteQueue>>>,
    files: RefCell<HashMap<Arc<PathBuf>, Rc<BufferedFile>>>,
    report: Box<dyn Fn(Report)>,
    stopping: Cell<bool>,
    busy: Cell<u32>,
    idle_changed: Notify,
    pub stats: Cell<DeliveryStats>,
}

impl Deliverer {
    pub fn new(
        cfg: DeliveryConfig,
        hostname: String,
        resolver: Rc<Resolver>,
        report: Box<dyn Fn(Report)>,
    ) -> Deliverer {
        let tls = crate::tls::opportunistic_client()
            .map_err(|e| log::error!("TLS client config: {e}"))
            .ok();
        let verified = crate::tls::verified_client(cfg.tls_ca_file.as_deref())
            .map_err(|e| log::error!("TLS client config for tls = \"required\": {e}"))
            .ok();
        Deliverer {
            cfg,
            hostname,
            resolver,
            tls,
            verified,
            sites: RefCell::new(HashMap::new()),
            files: RefCell::new(HashMap::new()),
            report,
            stopping: Cell::new(false),
            busy: Cell::new(0),
            idle_changed: Notify::default(),
            stats: Cell::new(DeliveryStats::default()),
        }
    }

    fn count(&self, f: impl FnOnce(&mut DeliveryStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// Queues a job on its site and opens a connection if the queue outgrew the idle ones.
    pub fn enqueue(self: &Rc<Self>, job: Job) {
        let sq = {
            let mut sites = self.sites.borrow_mut();
            Rc::clone(sites.entry(job.site.key.clone()).or_insert_with(|| {
                Rc::new(SiteQueue {
                    site: Arc::clone(&job.site),
                    ready: RefCell::new(VecDeque::new()),
                    work: Notify::default(),
                    connections: Cell::new(0),
                    idle: Cell::new(0),
                    chainers: Cell::new(0),
                    taken_since_sweep: Cell::new(0),
                    opened: Cell::new(0),
                    chunking_refused: Cell::new(false),
                })
            }))
        };
        sq.ready.borrow_mut().push_back(job);
        sq.wake_for_unreserved();
        self.grow(&sq);
    }

    fn grow(self: &Rc<Self>, sq: &Rc<SiteQueue>) {
        self.grow_beyond(sq, sq.chainers.get());
    }

    /// Opens a connection when more mail waits than idle connections and `reserved`
    /// (the chainers that will take some) can carry.
    fn grow_beyond(self: &Rc<Self>, sq: &Rc<SiteQueue>, reserved: u32) {
        let waiting = sq.ready.borrow().len() as u32;
        if self.stopping.get()
            || waiting <= sq.idle.get() + reserved
            || sq.connections.get() >= self.cfg.max_connections_per_host
        {
            return;
        }
        sq.connections.set(sq.connections.get() + 1);
        glommio::spawn_local(Rc::clone(self).connection(Rc::clone(sq))).detach();
    }

    /// Every `CHAIN_WAIT_MAX`: a site whose waiting mail nobody took since the last sweep
    /// (its chainers are stalled) gets an idle connection woken, or a new one, regardless
    /// of the chainers. Runs until the deliverer stops.
    pub async fn sweep_reservations(self: Rc<Self>) {
        while !self.stopping.get() {
            glommio::timer::sleep(CHAIN_WAIT_MAX).await;
            let stuck: Vec<Rc<SiteQueue>> = self
                .sites
                .borrow()
                .values()
                .filter(|sq| {
                    // Every site's count starts again at each sweep.
                    let stalled = sq.taken_since_sweep.replace(0) == 0;
                    stalled && sq.chainers.get() > 0 && !sq.ready.borrow().is_empty()
                })
                .cloned()
                .collect();
            for sq in &stuck {
                sq.work.notify_one();
                self.grow_beyond(sq, 0);
            }
        }
    }

    /// Open outbound connections, and the ready depth of each site, for the metrics.
    pub fn gauges(&self) -> (u64, Vec<(String, u64)>) {
        let sites = self.sites.borrow();
        let open = sites.values().map(|s| u64::from(s.connections.get())).sum();
        let depths = sites
            .values()
            .map(|s| (s.site.key.clone(), s.ready.borrow().len() as u64))
            .filter(|(_, d)| *d > 0)
            .collect();
        (open, depths)
    }

    /// Stops taking jobs; returns once no transaction is in flight (or at `deadline`).
    pub async fn stop(&self, within: Duration) {
        self.stopping.set(true);
        for sq in self.sites.borrow().values() {
            sq.work.notify_all();
        }
        let _ = glommio::timer::timeout(within, async {
            while self.busy.get() > 0 {
                self.idle_changed.notified().await;
            }
            Ok(())
        })
        .await;
    }

    fn report_all(&self, job: &Job, kind: OutcomeKind, reply: &str, remote: Option<&Arc<str>>) {
        let mut r = Report::all(
            job.origin,
            job.id,
            job.rcpts.iter().map(|r| r.index),
            kind,
            reply,
        );
        r.remote = remote.cloned();
        self.report(r);
    }

    fn report(&self, r: Report) {
        self.count(|s| {
            for x in &r.rcpts {
                match x.kind {
                    OutcomeKind::Delivered => s.delivered += 1,
                    OutcomeKind::Deferred => s.deferred += 1,
                    OutcomeKind::Failed => s.failed += 1,
                    OutcomeKind::Held | OutcomeKind::Released | OutcomeKind::Deleted => {}
                }
            }
        });
        (self.report)(r);
    }

    async fn connection(self: Rc<Self>, sq: Rc<SiteQueue>) {
        let turn = sq.opened.get();
        sq.opened.set(turn.wrapping_add(1));
        match self.open(&sq.site, turn).await {
            Err(reason) => {
                // No host of the site can be reached: everything waiting for it is deferred.
                let jobs: Vec<Job> = sq.ready.borrow_mut().drain(..).collect();
                for job in &jobs {
                    self.report_all(job, OutcomeKind::Deferred, &reason, None);
                }
            }
            Ok(mut out) => {
                self.count(|s| s.connections += 1);
                out.caps.chunking &= !sq.chunking_refused.get();
                let mut sent = 0u32;
                // A message whose envelope already went out behind the previous content.
                let mut chained: Option<Prepared> = None;
                loop {
                    let (prepared, cached, presented) = match chained.take() {
                        Some(p) => (p, false, true),
                        None => {
                            let Some((job, waited)) = self.next_job(&sq).await else {
                                break;
                            };
                            let Some(p) = self.prepare(&out, job).await else {
                                continue;
                            };
                            // A connection that sat idle (after a message, or after its
                            // EHLO) may have been closed by the other side meanwhile.
                            (p, sent > 0 || waited, false)
                        }
                    };
                    self.busy.set(self.busy.get() + 1);
                    let chain = (out.caps.pipelining
                        && !out.lmtp
                        && sent + 1 < self.cfg.max_messages_per_connection)
                        .then_some(&sq);
                    let done = self
                        .transaction(&mut out, prepared, cached, presented, chain)
                        .await;
                    self.busy.set(self.busy.get() - 1);
                    self.idle_changed.notify_all();
                    sent += 1;
                    if matches!(done, Done::Unchunked(_)) {
                        sq.chunking_refused.set(true);
                    }
                    let usable = match done {
                        Done::Usable => true,
                        Done::Broken => false,
                        Done::Chained(next) => {
                            chained = Some(*next);
                            true
                        }
                        Done::Stale(job) | Done::Unchunked(job) => {
                            // The job never reached the next hop (the cached connection
                            // had died, or broke before the job's first reply, or refused
                            // BDAT): it goes first on a fresh connection, which after a
                            // refused BDAT starts without CHUNKING, as all of the site's.
                            sq.ready.borrow_mut().push_front(*job);
                            sq.wake_for_unreserved();
                            false
                        }
                    };
                    if !usable
                        || (chained.is_none() && sent >= self.cfg.max_messages_per_connection)
                    {
                        break;
                    }
                }
                let _ = glommio::timer::timeout(
                    self.cfg.command_timeout.min(Duration::from_secs(5)),
                    async {
                        out.conn.send(b"QUIT\r\n").await?;
                        let _ = out.conn.reply().await;
                        Ok(())
                    },
                )
                .await;
            }
        }
        sq.connections.set(sq.connections.get() - 1);
        if !sq.ready.borrow().is_empty() {
            self.grow(&sq);
        }
    }

    /// The next job for a connection of this site, waiting up to `idle_timeout`; true
    /// when the connection had to wait for it.
    async fn next_job(&self, sq: &SiteQueue) -> Option<(Job, bool)> {
        let mut waited = false;
        let mut timed_out = false;
        loop {
            if self.stopping.get() {
                return None;
            }
            // A wake and the idle timeout may land together: the job is taken either way.
            if let Some(job) = sq.ready.borrow_mut().pop_front() {
                sq.taken_since_sweep.set(sq.taken_since_sweep.get() + 1);
                return Some((job, waited));
            }
            if timed_out {
                return None;
            }
            waited = true;
            sq.idle.set(sq.idle.get() + 1);
            timed_out = glommio::timer::timeout(self.cfg.idle_timeout, async {
                sq.work.notified().await;
                Ok(())
            })
            .await
            .is_err();
            sq.idle.set(sq.idle.get() - 1);
        }
    }

    /// Connects to the first host of the site that answers with 2xx, says EHLO (HELO if
    /// refused), and upgrades with STARTTLS when offered.
    async fn open(&self, site: &Site, turn: usize) -> Result<Outbound, String> {
        let mut last = format!(
            "451 4.4.1 no host of {} could be reached",
            site.hosts.join(", ")
        );
        for host in site.connection_order(turn) {
            let ips = match self.resolver.addresses(host).await {
                Ok(Answer::Records(r)) => dns::ips(&r),
                Ok(_) => {
                    last = format!("451 4.4.4 {host}: no address records");
                    continue;
                }
                Err(e) => {
                    last = format!("451 4.4.3 {host}: address lookup failed: {e}");
                    continue;
                }
            };
            for ip in ips {
                let addr = SocketAddr::new(ip, site.port);
                match self.try_host(host, addr, site).await {
                    Ok(out) => return Ok(out),
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }

    /// One host: connect, greeting, EHLO, STARTTLS as the site's TLS policy says.
    /// The error is the reply to record (4.4.1 unreachable, 4.7.x TLS policy).
    async fn try_host(
        &self,
        host: &str,
        addr: SocketAddr,
        site: &Site,
    ) -> Result<Outbound, String> {
        let at = format!("{host}[{}]:{}", addr.ip(), addr.port());
        let io = |e: io::Error| format!("451 4.4.1 {at}: {e}");
        let io = &io;
        let tcp = TcpStream::connect_timeout(addr, self.cfg.connect_timeout)
            .await
            .map_err(|e| io(io::Error::from(e)))?;
        tcp.set_read_timeout(Some(self.cfg.command_timeout))
            .map_err(|e| io(e.into()))?;
        tcp.set_write_timeout(Some(self.cfg.command_timeout))
            .map_err(|e| io(e.into()))?;
        let _ = tcp.set_nodelay(true);
        let mut conn = Conn::new(Stream::Plain(tcp));
        let greeting = conn.reply().await.map_err(io)?;
        if greeting.code != 220 {
            return Err(format!(
                "451 4.4.1 {at}: greeting {} {}",
                greeting.code,
                greeting.lines.join(" ")
            ));
        }
        let lmtp = site.protocol == Protocol::Lmtp;
        let mut caps = self.hello(&mut conn, lmtp).await.map_err(io)?;
        let config = match site.tls {
            OutboundTls::None => None,
            OutboundTls::Opportunistic => self.tls.clone(),
            OutboundTls::Required => {
                let Some(c) = self.verified.clone() else {
                    return Err(format!(
                        "451 4.7.5 {at}: no trust store for tls = \"required\""
                    ));
                };
                if !caps.starttls {
                    return Err(format!(
                        "451 4.7.4 {at}: TLS is required but the host does not offer STARTTLS"
                    ));
                }
                Some(c)
            }
        };
        if let (true, Some(config)) = (caps.starttls, config) {
            conn.send(b"STARTTLS\r\n").await.map_err(io)?;
            let r = conn.reply().await.map_err(io)?;
            if r.code == 220 {
                let plain = std::mem::replace(&mut conn.stream, Stream::Gone);
                // SNI and verification use the MX host name (RFC 7672 would use DANE;
                // MTA-STS, RFC 8461, would also check the name against the policy).
                conn = Conn::new(
                    plain
                        .upgrade_client(config, host.trim_end_matches('.'))
                        .await
                        .map_err(|e| format!("451 4.7.5 {at}: TLS handshake failed: {e}"))?,
                );
                caps = self.hello(&mut conn, lmtp).await.map_err(io)?;
            } else if site.tls == OutboundTls::Required {
                return Err(format!(
                    "451 4.7.4 {at}: STARTTLS refused: {} {}",
                    r.code,
                    r.lines.join(" ")
                ));
            }
        }
        Ok(Outbound {
            conn,
            caps,
            remote: Arc::from(format!("{host}[{}]", addr.ip())),
            lmtp,
            buf: Vec::new(),
        })
    }

    async fn hello(&self, conn: &mut Conn, lmtp: bool) -> io::Result<Capabilities> {
        let verb = if lmtp { "LHLO" } else { "EHLO" };
        conn.send(format!("{verb} {}\r\n", self.hostname).as_bytes())
            .await?;
        let r = conn.reply().await?;
        if r.code == 250 {
            return Ok(Capabilities::from_ehlo(&r.lines));
        }
        if lmtp {
            return Err(io::Error::other(format!(
                "LHLO refused: {}",
                r.lines.join(" ")
            )));
        }
        conn.send(format!("HELO {}\r\n", self.hostname).as_bytes())
            .await?;
        let r = conn.reply().await?;
        if r.code != 250 {
            return Err(io::Error::other(format!(
                "HELO refused: {}",
                r.lines.join(" ")
            )));
        }
        Ok(Capabilities::default())
    }

    /// The segment file for reading content. Buffered (page cache) reads: the log writes
    /// with O_DIRECT, but glommio's O_DIRECT reads probe for polled I/O, which virtual
    /// disks refuse (EOPNOTSUPP); a buffered read of a just-written segment is as cheap.
    async fn file(&self, path: &Arc<PathBuf>) -> io::Result<Rc<BufferedFile>> {
        let cached = self.files.borrow().get(path).cloned();
        if let Some(f) = cached {
            return Ok(f);
        }
        let opened = crate::queue::open_segment_for_reading(path).await?;
        // Another connection may have opened it meanwhile: keep one, close the other.
        let existing = self.files.borrow().get(path).cloned();
        if let Some(f) = existing {
            let _ = opened.close().await;
            return Ok(f);
        }
        let f = Rc::new(opened);
        let mut files = self.files.borrow_mut();
        if files.len() >= OPEN_SEGMENTS_MAX {
            files.clear();
        }
        files.insert(Arc::clone(path), Rc::clone(&f));
        Ok(f)
    }

    /// Checks a job against the connection's capabilities and reads its content. A job
    /// that cannot go (too big for the next hop, an unreadable queue) is reported here.
    async fn prepare(&self, out: &Outbound, job: Job) -> Option<Prepared> {
        if let Err(f) = client::precheck(&out_envelope(&job), &out.caps) {
            self.report_all(
                &job,
                kind_of(Disposition::of_failure(&f)),
                f.text(),
                Some(&out.remote),
            );
            return None;
        }
        let content = match self.file(&job.segment).await {
            Ok(f) => f
                .read_at(job.content_offset, job.content_len as usize)
                .await
                .map_err(io::Error::from),
            Err(e) => Err(e),
        };
        match content {
            Ok(content) if content.len() as u64 == job.content_len => Some(Prepared {
                job,
                content,
                reservation: None,
            }),
            Ok(_) => {
                self.report_all(
                    &job,
                    OutcomeKind::Deferred,
                    "451 4.3.0 queue file is short",
                    None,
                );
                None
            }
            Err(e) => {
                self.report_all(
                    &job,
                    OutcomeKind::Deferred,
                    &format!("451 4.3.0 cannot read the queue: {e}"),
                    None,
                );
                None
            }
        }
    }

    /// One message over an open connection. `cached`: the connection sat idle before it
    /// (it may have died meanwhile: then the job goes back for a fresh connection).
    /// `presented`: its envelope went out already, behind the previous message. `chain`:
    /// the site queue whose next message may follow this one's content in the same write
    /// (RFC 2920 3.1: content may be the first "command" of a group).
    async fn transaction(
        &self,
        out: &mut Outbound,
        prepared: Prepared,
        cached: bool,
        presented: bool,
        chain: Option<&Rc<SiteQueue>>,
    ) -> Done {
        let Prepared {
            job,
            content,
            reservation,
        } = prepared;
        let chunked = !presented && self.chunking_fits(out, content.len());
        // A chunk carries the content along: once it is sent, a missing reply no longer
        // proves the message undelivered. A connection that sat idle is looked at first,
        // so that one the next hop closed meanwhile still hands its job back untouched.
        if chunked && cached && out.conn.peer_spoke_or_left() {
            return Done::Stale(Box::new(job));
        }
        self.count(|s| {
            s.transactions += 1;
            s.chunked += u64::from(chunked);
        });
        let mut tx = if chunked {
            Transaction::chunked(job.rcpts.len())
        } else {
            Transaction::new(job.rcpts.len(), out.caps.pipelining, out.lmtp)
        };
        let lost = Failure::Lost(format!(
            "451 4.4.2 {}: connection lost during the transaction",
            out.remote
        ));
        let mut next = None;
        let exchange = Exchange {
            job: &job,
            content: &content,
            presented,
            chunked,
            chain,
            reservation,
        };
        let result = self.drive(out, exchange, &mut tx, &mut next).await;
        if let Some(refusal) = tx.chunk_not_implemented() {
            log::warn!(
                "{}: offers CHUNKING but refused BDAT ({refusal}): DATA from now on",
                out.remote
            );
            return Done::Unchunked(Box::new(job));
        }
        if result.is_err() && cached && tx.untouched() && !chunked {
            return Done::Stale(Box::new(job));
        }
        self.report(Report {
            origin: job.origin,
            id: job.id,
            remote: Some(Arc::clone(&out.remote)),
            next_hop_dsn: out.caps.dsn,
            rcpts: job
                .rcpts
                .iter()
                .zip(tx.results(&lost))
                .map(|(r, (disposition, reply))| RcptResult {
                    index: r.index,
                    kind: kind_of(disposition),
                    reply,
                })
                .collect(),
        });
        match (result, next) {
            (Ok(true), Some(next)) => Done::Chained(Box::new(next)),
            (Ok(true), None) => Done::Usable,
            (Ok(false), None) if out.reset().await.is_ok() => Done::Usable,
            (Ok(false), None) => Done::Broken,
            // The chained message got no reply: it never reached the next hop.
            (Ok(false), Some(next)) => Done::Stale(Box::new(next.job)),
            (Err(e), next) => {
                log::debug!("delivery to {} broke: {e}", out.remote);
                match next {
                    Some(next) => Done::Stale(Box::new(next.job)),
                    None => Done::Broken,
                }
            }
        }
    }

    /// Whether a transaction of `content_len` octets (wire form) goes as one BDAT chunk.
    fn chunking_fits(&self, out: &Outbound, content_len: usize) -> bool {
        self.cfg.chunking
            && out.caps.chunking
            && out.caps.pipelining
            && !out.lmtp
            && content_len <= BDAT_CONTENT_BYTES_MAX
    }

    /// The next message of the site for chaining, prepared; None when none is waiting.
    async fn chain_next(&self, out: &Outbound, sq: &Rc<SiteQueue>) -> Option<Prepared> {
        loop {
            let job = sq.ready.borrow_mut().pop_front()?;
            sq.taken_since_sweep.set(sq.taken_since_sweep.get() + 1);
            if let Some(mut p) = self.prepare(out, job).await {
                // Its envelope goes out now: the connection chains again after its content.
                p.reservation = Some(Reservation::new(sq));
                return Some(p);
            }
        }
    }

    /// Sends the commands and content and feeds the replies to `tx`. Ok(clean). With a
    /// chain, the next waiting message's envelope follows the content in the same write
    /// and lands in `next`.
    async fn drive(
        &self,
        out: &mut Outbound,
        x: Exchange<'_>,
        tx: &mut Transaction,
        next: &mut Option<Prepared>,
    ) -> io::Result<bool> {
        let Exchange {
            job,
            content,
            presented,
            chunked,
            chain,
            mut reservation,
        } = x;
        // `out.buf` is the connection's one write buffer: no allocation per transaction.
        if chunked {
            // The whole transaction in one write; nothing rides behind it (a refused
            // chunk may leave the next hop mid-transaction until RSET).
            out.buf.clear();
            chunked_group(job, content, &out.caps, &mut out.buf);
            out.set_timeout(self.cfg.data_timeout);
            out.conn.send(&out.buf).await?;
        } else if !presented {
            reservation = chain.map(Reservation::new);
            out.buf.clear();
            envelope_group(job, &out.caps, &mut out.buf);
            out.conn.send(&out.buf).await?;
        }
        loop {
            let reply = out.conn.reply().await?;
            match tx.on_reply(Reply::new(reply.code, &reply.lines)) {
                Step::Read => {}
                Step::SendRcpt(i) => {
                    out.buf.clear();
                    client::rcpt_command(&out_rcpt(&job.rcpts[i]), &out.caps, &mut out.buf);
                    out.conn.send(&out.buf).await?;
                }
                Step::SendData => out.conn.send(b"DATA\r\n").await?,
                Step::SendContent => {
                    out.set_timeout(self.cfg.data_timeout);
                    let end: &[u8] = if content.is_empty() || content.ends_with(b"\r\n") {
                        b".\r\n"
                    } else {
                        b"\r\n.\r\n"
                    };
                    out.buf.clear();
                    if content.len() <= COALESCE_CONTENT_BYTES_MAX {
                        // One write, one segment on the wire: a copy of a few KiB costs
                        // less than a second send(2).
                        out.buf.extend_from_slice(content);
                    } else {
                        out.conn.send(content).await?;
                    }
                    out.buf.extend_from_slice(end);
                    if let Some(sq) = chain {
                        if let Some(p) = self.chain_next(out, sq).await {
                            envelope_group(&p.job, &out.caps, &mut out.buf);
                            *next = Some(p);
                            self.count(|s| s.chained += 1);
                        }
                    }
                    // This connection's chance to chain is spent.
                    drop(reservation.take());
                    out.conn.send(&out.buf).await?;
                }
                Step::SendEmpty => out.conn.send(b".\r\n").await?,
                Step::Done { clean } => {
                    out.set_timeout(self.cfg.command_timeout);
                    return Ok(clean);
                }
            }
        }
    }
}

/// Content up to this size goes out with its terminating dot in one write.
const COALESCE_CONTENT_BYTES_MAX: usize = 64 * 1024;

/// Content up to this size (unstuffed, copied into the connection's write buffer) goes
/// out as one BDAT chunk; larger content takes DATA and is written from the queue's
/// buffer as it is, so a connection's buffer stays this small.
pub const BDAT_CONTENT_BYTES_MAX: usize = 64 * 1024;

/// How a transaction left its connection.
enum Done {
    Usable,
    Broken,
    /// The connection was dead before the job got a reply: the job is handed back.
    Stale(Box<Job>),
    /// The next hop offered CHUNKING and refused BDAT as a command: the job was not taken
    /// and the session is out of step (the chunk may be read as commands). The job goes
    /// again at once on a fresh connection, with DATA.
    Unchunked(Box<Job>),
    /// Usable, and the next message's envelope is already on its way.
    Chained(Box<Prepared>),
}

/// A job checked against the connection, with its content read from the queue.
struct Prepared {
    job: Job,
    content: glommio::io::ReadResult,
    /// Chained: its envelope is out, and its connection counts as a chainer until its
    /// content is written.
    reservation: Option<Reservation>,
}

/// What one transaction sends.
struct Exchange<'a> {
    job: &'a Job,
    content: &'a [u8],
    presented: bool,
    /// The content goes as one BDAT chunk behind the envelope (not presented before).
    chunked: bool,
    chain: Option<&'a Rc<SiteQueue>>,
    reservation: Option<Reservation>,
}

/// A connection counted in its site's `chainers` from its envelope to its content. New
/// messages up to that count are left for the chainers (one write and one round trip
/// each, on the next hop too) instead of waking idle connections (two of each); when it
/// ends, by its content or by any failure, those beyond the remaining chainers wake idle
/// connections.
struct Reservation(Rc<SiteQueue>);

impl Reservation {
    fn new(sq: &Rc<SiteQueue>) -> Reservation {
        sq.chainers.set(sq.chainers.get() + 1);
        Reservation(Rc::clone(sq))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let sq = &self.0;
        sq.chainers.set(sq.chainers.get() - 1);
        sq.wake_for_unreserved();
    }
}

impl SiteQueue {
    /// Wakes an idle connection when more messages wait than the chainers will take.
    fn wake_for_unreserved(&self) {
        if self.ready.borrow().len() > self.chainers.get() as usize {
            self.work.notify_one();
        }
    }
}

fn out_envelope(job: &Job) -> OutEnvelope<'_> {
    OutEnvelope {
        sender: &job.sender,
        smtputf8: job.smtputf8,
        eight_bit: job.eight_bit,
        ret: job.ret,
        envid: job.envid.as_deref(),
        size: job.content_len,
    }
}

fn out_rcpt(r: &JobRcpt) -> OutRcpt<'_> {
    OutRcpt {
        address: &r.address,
        notify: r.notify,
        orcpt: r.orcpt.as_deref(),
    }
}

/// MAIL, and with PIPELINING every RCPT and DATA too: the first write of a transaction.
fn envelope_group(job: &Job, caps: &Capabilities, buf: &mut Vec<u8>) {
    if caps.pipelining {
        mail_and_rcpts(job, caps, buf);
        buf.extend_from_slice(b"DATA\r\n");
    } else {
        client::mail_command(&out_envelope(job), caps, buf);
    }
}

fn mail_and_rcpts(job: &Job, caps: &Capabilities, buf: &mut Vec<u8>) {
    client::mail_command(&out_envelope(job), caps, buf);
    for r in &job.rcpts {
        client::rcpt_command(&out_rcpt(r), caps, buf);
    }
}

/// MAIL, every RCPT and the whole content as one last chunk (RFC 3030: `BDAT n LAST`,
/// the octets as the sender meant them, so unstuffed from the queue's wire form).
fn chunked_group(job: &Job, content: &[u8], caps: &Capabilities, buf: &mut Vec<u8>) {
    mail_and_rcpts(job, caps, buf);
    // As after DATA, content that does not end a line gets its CRLF.
    let crlf: &[u8] = if content.is_empty() || content.ends_with(b"\r\n") {
        b""
    } else {
        b"\r\n"
    };
    let len = data::unstuffed_len(content) + crlf.len();
    let _ = std::io::Write::write_fmt(buf, format_args!("BDAT {len} LAST\r\n"));
    data::push_unstuffed(content, buf);
    buf.extend_from_slice(crlf);
}

fn kind_of(d: Disposition) -> OutcomeKind {
    match d {
        Disposition::Delivered => OutcomeKind::Delivered,
        Disposition::Deferred => OutcomeKind::Deferred,
        Disposition::Failed => OutcomeKind::Failed,
    }
}

/// An open outbound session.
struct Outbound {
    conn: Conn,
    caps: Capabilities,
    remote: Arc<str>,
    lmtp: bool,
    /// Reused for every write of the connection's transactions.
    buf: Vec<u8>,
}

impl Outbound {
    fn set_timeout(&self, t: Duration) {
        if let Some(tcp) = self.conn.stream.tcp() {
            let _ = tcp.set_read_timeout(Some(t));
        }
    }

    async fn reset(&mut self) -> io::Result<()> {
        self.conn.send(b"RSET\r\n").await?;
        let r = self.conn.reply().await?;
        if r.code == 250 {
            Ok(())
        } else {
            Err(io::Error::other("RSET refused"))
        }
    }
}
