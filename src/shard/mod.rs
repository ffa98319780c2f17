//! Shards: one glommio executor per core, each with its own io_uring ring, its own
//! listeners (SO_REUSEPORT), its own queue log and its own sessions. Nothing on the data
//! path is shared between shards; the only cross-thread state is the shutdown flag.

pub mod links;
pub mod local;
pub mod pace;
pub mod placement;

pub use placement::allowed_cpus;

use crate::config::{Config, ListenKind};
use crate::deliver::qmgr::QueueManager;
use crate::deliver::{Deliverer, DeliveryStats, Mail};
use crate::net::inbound;
use crate::net::watchdog::Watchdog;
use crate::queue::log::{Log, LogSettings, LogStats, RecoveryReport};
use crate::queue::recovery;
use crate::route::dns::{self, Resolver};
use crate::route::Router;
use crate::smtp::session::ListenerMode;
use crate::smtp::session::SessionConfig;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::TcpListener;
use glommio::LocalExecutorBuilder;
use local::{Latch, Signal};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How often a shard looks at the process-wide shutdown flag. Signals arrive on another
/// thread; polling a flag this rarely costs nothing and needs no cross-thread waker.
const SHUTDOWN_POLL: Duration = Duration::from_millis(20);
/// After the grace period, how long sessions get to write their 421 and go.
const CLOSE_AFTER_GRACE: Duration = Duration::from_secs(2);

/// Connection limits and timeouts, copied out of the config once.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: u32,
    pub max_connections_per_ip: u32,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub shutdown_grace: Duration,
    pub min_data_rate: u32,
    pub greet_pause: Duration,
    pub read_buffer_bytes: usize,
}

/// One shard's state, owned by its executor thread.
pub struct Shard {
    pub id: usize,
    /// Replaced on SIGHUP; each session keeps the one it started with (as Postfix's smtpd
    /// processes do), new sessions get the new one.
    pub session: RefCell<Rc<SessionConfig>>,
    pub limits: Limits,
    pub log: Rc<Log>,
    pub connections: Cell<u32>,
    pub per_ip: RefCell<HashMap<IpAddr, u32>>,
    pub connection_closed: Signal,
    /// Set when shutdown begins: stop accepting; idle sessions say 421 and go.
    pub drain_started: Rc<Latch<()>>,
    /// Set when the grace period is over: every session says 421 and goes.
    pub grace_over: Rc<Latch<()>>,
    pub qmgr: Rc<QueueManager>,
    pub deliverer: Rc<Deliverer>,
    pub links: Rc<links::Links>,
    pub tls: Option<Arc<crate::tls::Reloadable>>,
    pub auth: Option<crate::auth::Authenticator>,
    pub board: Arc<crate::metrics::Board>,
    /// Session deadlines (command and content timeouts).
    pub watchdog: Rc<Watchdog>,
    /// Messages accepted (stored and answered 250).
    pub accepted: Cell<u64>,
    /// End of content to 250, microseconds.
    pub store_us: RefCell<hdrhistogram::Histogram<u64>>,
    /// What loop pacing did ([`pace`]).
    pub pace: Rc<pace::PaceStats>,
}

/// What a shard tells the main thread once it is serving (or why it could not start).
pub enum Startup {
    Ready {
        shard: usize,
        cpu: usize,
        report: RecoveryReport,
    },
    Failed {
        shard: usize,
        error: String,
    },
}

/// A shard's final word, for the exit report.
pub struct Finished {
    pub shard: usize,
    pub log: LogStats,
    pub delivery: DeliveryStats,
}

/// `[tuning] mesh_capacity = 0`: the cross-shard channels together take at most this much.
const MESH_MEMORY_BUDGET_BYTES: usize = 64 << 20;
/// Bounds of the automatic channel capacity.
const MESH_CAPACITY_AUTO_MIN: usize = 64;
const MESH_CAPACITY_AUTO_MAX: usize = 4096;

/// Slots per cross-shard channel. A full mesh of `n` shards has n(n-1) channels whose
/// slots are allocated up front: 4096 each would be 2.2 GB at 64 shards.
pub fn mesh_capacity(configured: usize, n: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let slot = std::mem::size_of::<Mail>() + std::mem::align_of::<Mail>();
    let channels = (n * n.saturating_sub(1)).max(1);
    let fit = MESH_MEMORY_BUDGET_BYTES / (channels * slot);
    // glommio rounds a capacity up to a power of two: round down here to stay in budget.
    let pow2 = if fit == 0 { 1 } else { 1 << fit.ilog2() };
    pow2.clamp(MESH_CAPACITY_AUTO_MIN, MESH_CAPACITY_AUTO_MAX)
}
/// After delivery stops, how long a shard keeps listening for other shards' reports.
const REPORT_SETTLE: Duration = Duration::from_millis(200);

/// The directories shard `k` of `n` recovers: its own, then those of shards that no
/// longer exist (a smaller `shards` than last run), spread by K mod n.
pub fn owned_dirs(
    queue_dir: &std::path::Path,
    k: usize,
    n: usize,
) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs = vec![recovery::shard_dir(queue_dir, k)];
    for (other, path) in recovery::shard_dirs(queue_dir)? {
        if other >= n && other % n == k {
            dirs.push(path);
        }
    }
    Ok(dirs)
}

/// Starts every shard, waits until all serve (or one fails), then runs until `shutdown`
/// is set and every shard has drained. Returns each shard's final stats.
/// What every shard shares, built once before the shards start.
pub struct Shared {
    /// Our certificate (reloaded on SIGHUP).
    pub tls: Option<Arc<crate::tls::Reloadable>>,
    pub users: Option<Arc<std::collections::BTreeMap<String, String>>>,
    /// A hash checked for unknown users, so that they cost as much as known ones.
    pub decoy: Arc<String>,
    /// Every shard's latest metrics.
    pub board: Arc<crate::metrics::Board>,
    /// The configuration, replaced by SIGHUP; `generation` counts replacements.
    pub reloaded: std::sync::Mutex<Arc<Config>>,
    pub generation: std::sync::atomic::AtomicU64,
}

pub fn run(
    config: Arc<Config>,
    cpus: Vec<usize>,
    shutdown: Arc<AtomicBool>,
    shared: Arc<Shared>,
    on_ready: impl FnOnce(&[Startup]),
) -> Result<Vec<Finished>, String> {
    let n = cpus.len();
    let capacity = mesh_capacity(config.tuning.mesh_capacity, n);
    let mesh: MeshBuilder<Mail, Full> = MeshBuilder::full(n, capacity);
    let (tx, rx) = mpsc::channel();
    let placement_of = placement::of(config.tuning.placement, &cpus)
        .map_err(|e| format!("[tuning] placement = \"floating\": {e}"))?;
    let mut handles = Vec::with_capacity(n);
    for (k, &cpu) in cpus.iter().enumerate() {
        let config = Arc::clone(&config);
        let shutdown = Arc::clone(&shutdown);
        let tx = tx.clone();
        let mesh = mesh.clone();
        let shared = Arc::clone(&shared);
        let builder = LocalExecutorBuilder::new(placement_of(cpu))
            .name(&format!("shard-{k}"))
            .ring_depth(config.tuning.ring_depth)
            .io_memory(config.tuning.io_memory_bytes)
            .preempt_timer(config.tuning.preempt_timer);
        let handle = builder
            .spawn(move || async move {
                shard_main(
                    Place { k, n, cpu },
                    Inputs {
                        config,
                        shutdown,
                        tx,
                        mesh,
                        shared,
                    },
                )
                .await
            })
            .map_err(|e| format!("shard {k}: cannot start an executor on cpu {cpu}: {e}"))?;
        handles.push(handle);
    }
    drop(tx);
    let mut startups: Vec<Startup> = Vec::with_capacity(n);
    for _ in 0..n {
        match rx.recv() {
            Ok(s) => startups.push(s),
            Err(_) => break,
        }
    }
    let failed: Vec<String> = startups
        .iter()
        .filter_map(|s| match s {
            Startup::Failed { shard, error } => Some(format!("shard {shard}: {error}")),
            Startup::Ready { .. } => None,
        })
        .collect();
    if !failed.is_empty() || startups.len() < n {
        shutdown.store(true, Ordering::SeqCst);
        for h in handles {
            let _ = h.join();
        }
        if failed.is_empty() {
            return Err("a shard exited during start-up".into());
        }
        return Err(failed.join("; "));
    }
    startups.sort_by_key(|s| match s {
        Startup::Ready { shard, .. } | Startup::Failed { shard, .. } => *shard,
    });
    on_ready(&startups);
    let mut finished = Vec::with_capacity(n);
    for (k, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Some(f)) => finished.push(f),
            Ok(None) => {}
            Err(e) => return Err(format!("shard {k} failed: {e}")),
        }
    }
    Ok(finished)
}

/// Where a shard sits: its index, the shard count and its CPU.
struct Place {
    k: usize,
    n: usize,
    cpu: usize,
}

/// What a shard gets from the main thread.
struct Inputs {
    config: Arc<Config>,
    shutdown: Arc<AtomicBool>,
    tx: mpsc::Sender<Startup>,
    mesh: MeshBuilder<Mail, Full>,
    shared: Arc<Shared>,
}

async fn shard_main(place: Place, inputs: Inputs) -> Option<Finished> {
    let Place { k, n, cpu } = place;
    let Inputs {
        config,
        shutdown,
        tx,
        mesh,
        shared,
    } = inputs;
    let fail = |error: String| {
        let _ = tx.send(Startup::Failed { shard: k, error });
        None
    };
    let dirs = match owned_dirs(&config.queue.dir, k, n) {
        Ok(d) => d,
        Err(e) => return fail(format!("queue dir {}: {e}", config.queue.dir.display())),
    };
    let settings = LogSettings {
        segment_bytes: config.queue.segment_bytes,
        commit_window: config.queue.commit_window,
        commit_bytes_max: config.queue.commit_bytes_max,
        sync: config.queue.sync,
        zero_ahead_bytes: config.queue.zero_ahead_bytes,
        outcome_delay: config.queue.outcome_delay,
    };
    let (log, report) = match Log::open(k, &dirs, settings) {
        Ok(x) => x,
        Err(e) => return fail(format!("queue recovery in {}: {e}", dirs[0].display())),
    };
    let mut listeners = Vec::new();
    for l in &config.listen {
        let mode = ListenerMode {
            starttls: config.tls.is_some() && l.kind != ListenKind::Smtps,
            implicit_tls: l.kind == ListenKind::Smtps,
            auth_required: l.kind == ListenKind::Submission,
        };
        match TcpListener::bind(l.addr) {
            Ok(listener) => listeners.push((listener, mode)),
            Err(e) => return fail(format!("cannot listen on {}: {e}", l.addr)),
        }
    }
    let log = Rc::new(log);
    let committer = glommio::spawn_local(Rc::clone(&log).run_committer());
    let (links, receivers) = match links::Links::join(n, mesh).await {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    let d = &config.delivery;
    let servers = if d.dns.is_empty() {
        dns::system_servers()
    } else {
        d.dns.clone()
    };
    let seed = crate::time::unix_micros() ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let resolver = Rc::new(Resolver::new(
        servers,
        d.dns_timeout,
        d.dns_attempts,
        d.negative_ttl,
        seed as u16,
    ));
    let mine = shard_delivery(d, n);
    let deliverer = Rc::new(Deliverer::new(
        mine.clone(),
        config.server.hostname.clone(),
        Rc::clone(&resolver),
        links.reporter(),
    ));
    let router = Router::new(&config, Rc::clone(&resolver), seed);
    let qmgr = Rc::new(QueueManager::new(
        links.me,
        n,
        Rc::clone(&log),
        router,
        mine,
        config.server.hostname.clone(),
        links.dispatcher(),
    ));
    links.connect(Rc::clone(&deliverer), Rc::clone(&qmgr), receivers);
    glommio::spawn_local(Rc::clone(&deliverer).sweep_reservations()).detach();
    qmgr.recover();
    let retries = glommio::spawn_local(Rc::clone(&qmgr).retry_loop());
    let s = &config.server;
    let shard = Rc::new(Shard {
        id: k,
        session: RefCell::new(Rc::new(SessionConfig::from_config(&config))),
        limits: Limits {
            max_connections: s.max_connections,
            max_connections_per_ip: s.max_connections_per_ip,
            command_timeout: s.command_timeout,
            data_timeout: s.data_timeout,
            shutdown_grace: s.shutdown_grace,
            min_data_rate: s.min_data_rate,
            greet_pause: s.greet_pause,
            read_buffer_bytes: config.tuning.read_buffer_bytes,
        },
        log: Rc::clone(&log),
        connections: Cell::new(0),
        per_ip: RefCell::new(HashMap::new()),
        connection_closed: Signal::default(),
        drain_started: Rc::default(),
        grace_over: Rc::default(),
        qmgr: Rc::clone(&qmgr),
        deliverer: Rc::clone(&deliverer),
        links: Rc::clone(&links),
        tls: shared.tls.clone(),
        auth: match (&shared.users, &config.auth) {
            (Some(users), Some(a)) => Some(crate::auth::Authenticator::new(
                Arc::clone(users),
                Arc::clone(&shared.decoy),
                a.failures_max,
                a.failure_window,
            )),
            _ => None,
        },
        board: Arc::clone(&shared.board),
        watchdog: Rc::default(),
        accepted: Cell::new(0),
        store_us: RefCell::new(crate::queue::log::sync_histogram()),
        pace: Rc::default(),
    });
    if !config.tuning.loop_period.is_zero() {
        glommio::spawn_local(pace::run(
            config.tuning.loop_period,
            config.tuning.loop_pace_cpu_pressure,
            Rc::clone(&shard.pace),
        ))
        .detach();
    }
    let sweeper = glommio::spawn_local(Rc::clone(&shard.watchdog).run(
        crate::net::watchdog::sweep_interval(&[s.command_timeout, s.data_timeout]),
    ));
    let publisher = glommio::spawn_local(publish_metrics(
        Rc::clone(&shard),
        Rc::clone(&resolver),
        Arc::clone(&shared),
    ));
    let admin = match (&config.admin, k) {
        (Some(a), 0) => match TcpListener::bind(a.listen) {
            Ok(l) => Some(glommio::spawn_local(crate::net::admin::serve(
                Rc::clone(&shard),
                l,
                a.token.clone(),
            ))),
            Err(e) => return fail(format!("cannot listen on [admin] {}: {e}", a.listen)),
        },
        _ => None,
    };
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|(l, mode)| glommio::spawn_local(inbound::accept_loop(Rc::clone(&shard), l, mode)))
        .collect();
    let _ = tx.send(Startup::Ready {
        shard: k,
        cpu,
        report,
    });
    drop(tx);

    while !shutdown.load(Ordering::Relaxed) {
        glommio::timer::sleep(SHUTDOWN_POLL).await;
    }
    drain(&shard).await;
    for a in acceptors {
        a.await;
    }
    if let Some(a) = admin {
        a.await;
    }
    drop(publisher);
    drop(sweeper);
    qmgr.stop();
    deliverer.stop(shard.limits.shutdown_grace).await;
    retries.await;
    // Reports from other shards' last transactions may still be on their way.
    glommio::timer::sleep(REPORT_SETTLE).await;
    log.close().await;
    committer.await;
    log::logger().flush();
    Some(Finished {
        shard: k,
        log: log.stats(),
        delivery: deliverer.stats.get(),
    })
}

/// This shard's delivery settings: `site_pools` resolved for the shard count (never
/// `auto`), and with per-shard site pools, its share of each site's connection limit (at
/// least one).
fn shard_delivery(d: &crate::config::Delivery, shards: usize) -> crate::config::Delivery {
    let mut mine = d.clone();
    mine.site_pools = d.site_pools.for_shards(shards);
    if mine.site_pools == crate::config::SitePools::Shard {
        mine.max_connections_per_host = d.max_connections_per_host.div_ceil(shards.max(1) as u32);
    }
    mine
}

/// How often a shard publishes its metrics snapshot.
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

async fn publish_metrics(shard: Rc<Shard>, resolver: Rc<Resolver>, shared: Arc<Shared>) {
    let mut generation = shared.generation.load(Ordering::SeqCst);
    loop {
        let now = shared.generation.load(Ordering::SeqCst);
        if now != generation {
            generation = now;
            let config = Arc::clone(&shared.reloaded.lock().unwrap_or_else(|e| e.into_inner()));
            reload_policy(&shard, &config);
        }
        shard.board.publish(shard.id, snapshot(&shard, &resolver));
        log::logger().flush();
        glommio::timer::sleep(METRICS_INTERVAL).await;
    }
}

/// SIGHUP: relay domains and networks, forwards, lists, VRFY/EXPN and limits for new
/// sessions; routes for the next routing decision.
fn reload_policy(shard: &Shard, config: &Config) {
    let mut fresh = SessionConfig::from_config(config);
    fresh.refusals = Rc::clone(&shard.session.borrow().refusals);
    *shard.session.borrow_mut() = Rc::new(fresh);
    shard.qmgr.router().reconfigure(config);
    log::info!(
        "shard {}: policy reloaded (relay domains, networks, forwards, lists, routes)",
        shard.id
    );
}

/// This shard's counters and queue, read off its own state.
fn snapshot(shard: &Shard, resolver: &Resolver) -> crate::metrics::ShardMetrics {
    let log = shard.log.stats();
    let d = shard.deliverer.stats.get();
    let dns = resolver.stats.get();
    let (open_out, sites) = shard.deliverer.gauges();
    let (messages, bytes, domains) = shard.log.with_index(|ix| {
        let bytes = ix.live().map(|e| e.message.content_len).sum::<u64>();
        (
            ix.len() as u64,
            bytes,
            crate::metrics::domains_of(ix.live()),
        )
    });
    crate::metrics::ShardMetrics {
        accepted: shard.accepted.get(),
        refusals: shard.session.borrow().refusals.borrow().clone(),
        connections_in: u64::from(shard.connections.get()),
        connections_out: open_out,
        outbound_connections: d.connections,
        transactions: d.transactions,
        chained: d.chained,
        chunked: d.chunked,
        trials: shard.pace.trials.get(),
        paid_trials: shard.pace.paid_trials.get(),
        paused_rounds: shard.pace.paused_rounds.get(),
        paused_us: shard.pace.paused_us.get(),
        delivered: d.delivered,
        deferred: d.deferred,
        failed: d.failed,
        queue_messages: messages,
        queue_bytes: bytes,
        commits: log.commits,
        records: log.records,
        log_bytes: log.bytes,
        fsync_us: Some(shard.log.sync_histogram()),
        store_us: Some(shard.store_us.borrow().clone()),
        batch: Some(shard.log.batch_histogram()),
        delay_us: Some(shard.qmgr.delay_histogram()),
        dns_queries: dns.queries,
        dns_cache_hits: dns.cache_hits,
        dns_failures: dns.failures,
        sites,
        domains,
    }
}

/// Stops accepting, lets sessions finish their transaction within the grace period,
/// then tells the rest 421.
async fn drain(shard: &Rc<Shard>) {
    shard.drain_started.set(());
    let deadline = Instant::now() + shard.limits.shutdown_grace;
    wait_for_sessions(shard, deadline).await;
    shard.grace_over.set(());
    wait_for_sessions(shard, Instant::now() + CLOSE_AFTER_GRACE).await;
}

async fn wait_for_sessions(shard: &Rc<Shard>, deadline: Instant) {
    while shard.connections.get() > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let _ = glommio::timer::timeout(left, async {
            shard.connection_closed.wait().await;
            Ok(())
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_mesh_capacity_fits_the_budget() {
        assert_eq!(mesh_capacity(0, 2), MESH_CAPACITY_AUTO_MAX);
        assert_eq!(mesh_capacity(0, 8), MESH_CAPACITY_AUTO_MAX);
        let slot = std::mem::size_of::<Mail>() + std::mem::align_of::<Mail>();
        for n in [16, 32, 64, 128] {
            let c = mesh_capacity(0, n);
            assert!(
                c.is_power_of_two() && c >= MESH_CAPACITY_AUTO_MIN,
                "{n}: {c}"
            );
            let bytes = n * (n - 1) * c * slot;
            assert!(
                c == MESH_CAPACITY_AUTO_MIN || bytes <= MESH_MEMORY_BUDGET_BYTES,
                "{n} shards: {c} slots, {bytes} bytes"
            );
        }
        assert!(mesh_capacity(0, 64) < mesh_capacity(0, 8));
        assert_eq!(mesh_capacity(100, 64), 100);
    }
}
