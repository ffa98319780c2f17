//! loadgen: ringpost's load generator (`send`), SMTP/LMTP sink (`sink`) and test DNS
//! server (`dns`). All three run on glommio executors like the relay itself.

mod dns;
mod report;
mod send;
mod sink;
mod tls;
mod workload;

use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often `loadgen sink --stats` rewrites its file (benches time delivery by it).
const STATS_PERIOD: Duration = Duration::from_millis(50);

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator, SMTP sink and test DNS server for ringpost"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send SMTP load to one target and report throughput and latency.
    Send(SendArgs),
    /// Receive mail like a real MX (or LMTP server), verify it, count it.
    Sink(SinkArgs),
    /// Answer DNS queries from a small zone, on UDP and TCP.
    Dns(DnsArgs),
}

fn duration(s: &str) -> Result<Duration, String> {
    ringpost::config::duration::parse(s)
}

#[derive(Args)]
struct SendArgs {
    /// The SMTP server to load.
    #[arg(long, default_value = "127.0.0.1:2525")]
    target: SocketAddr,
    /// Allow a target outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    allow_remote: bool,
    /// Concurrent connections (closed loop: each sends back to back).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Open loop: messages per second, scheduled independently of replies.
    #[arg(long)]
    rate: Option<f64>,
    /// Stop after this many messages (default 10000 when --duration is not given).
    #[arg(long)]
    messages: Option<u64>,
    /// Stop after this long, e.g. 30s.
    #[arg(long, value_parser = duration)]
    duration: Option<Duration>,
    /// Executors to spread connections over.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Message size, or a mix such as 1k:70,10k:25,100k:5.
    #[arg(long, default_value = "1k")]
    size: String,
    #[arg(long, default_value_t = 1)]
    rcpts_per_message: usize,
    /// Recipient domain, optionally weighted (d:weight); repeat for a mix.
    #[arg(long = "domain")]
    domains: Vec<String>,
    /// Use PIPELINING (MAIL, RCPT and DATA in one write).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pipelining: String,
    #[arg(long)]
    starttls: bool,
    /// Open a new connection for every message.
    #[arg(long)]
    one_message_per_connection: bool,
    /// Seed for sizes, domains and contents (printed; same seed, same workload).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value = "loadgen@loadgen.test")]
    from: String,
    /// Local part for every recipient (e.g. a sink magic word like tempfail-2).
    #[arg(long)]
    rcpt_local: Option<String>,
    #[arg(long, default_value = "loadgen.test")]
    helo: String,
    /// Per-read timeout.
    #[arg(long, value_parser = duration, default_value = "30s")]
    timeout: Duration,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the per-message latency histogram (.hgrm percentile distribution).
    #[arg(long)]
    hgrm: Option<PathBuf>,
}

#[derive(Args)]
struct SinkArgs {
    #[arg(long = "listen", default_value = "127.0.0.1:2526")]
    listen: Vec<SocketAddr>,
    #[arg(long, default_value_t = 1)]
    shards: usize,
    #[arg(long, default_value = "sink.loadgen.test")]
    hostname: String,
    /// Speak LMTP (RFC 2033): LHLO, one reply per recipient after DATA.
    #[arg(long)]
    lmtp: bool,
    /// Do not offer STARTTLS.
    #[arg(long)]
    no_tls: bool,
    /// Certificate chain (PEM) for STARTTLS instead of a generated self-signed one.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Extensions not to offer: pipelining, size, 8bitmime, enhancedstatuscodes, smtputf8,
    /// chunking, dsn, starttls, ehlo (then only HELO works).
    #[arg(long = "disable")]
    disabled: Vec<String>,
    /// Offer CHUNKING but answer BDAT "502 command not implemented", reading its chunk as
    /// commands: a broken next hop.
    #[arg(long)]
    bdat_unimplemented: bool,
    /// Fraction of recipients (or messages, with --fail-at data) answered 4xx.
    #[arg(long, default_value_t = 0.0)]
    defer_rate: f64,
    /// Fraction answered 5xx.
    #[arg(long, default_value_t = 0.0)]
    reject_rate: f64,
    #[arg(long, default_value = "rcpt", value_parser = ["rcpt", "data"])]
    fail_at: String,
    /// Per-domain defer rate, domain=fraction; overrides --defer-rate.
    #[arg(long)]
    domain_defer: Vec<String>,
    /// Per-domain reject rate, domain=fraction.
    #[arg(long)]
    domain_reject: Vec<String>,
    /// Delay before each reply.
    #[arg(long, value_parser = duration, default_value = "0s")]
    latency: Duration,
    /// Delay before each write of replies, however many it carries: a next hop this
    /// round trip away (pipelined commands cost one, lock-step ones one each).
    #[arg(long, value_parser = duration, default_value = "0s")]
    rtt: Duration,
    /// Delay for the slow@ magic recipient.
    #[arg(long, value_parser = duration, default_value = "2s")]
    slow_latency: Duration,
    /// Fraction of messages whose connection is dropped in the middle of DATA.
    #[arg(long, default_value_t = 0.0)]
    disconnect_rate: f64,
    #[arg(long, default_value_t = 104_857_600)]
    max_message_bytes: u64,
    /// Keep every accepted message: NNNNNNNN.eml (content) and NNNNNNNN.json (envelope).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Rewrite this file with the JSON totals every `STATS_PERIOD` (20 times a second).
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Write the final totals as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, value_parser = duration, default_value = "60s")]
    timeout: Duration,
}

#[derive(Args)]
struct DnsArgs {
    #[arg(long, default_value = "127.0.0.1:5353")]
    listen: SocketAddr,
    /// Zone file (see `loadgen dns --help` and README).
    #[arg(long)]
    zone: Option<PathBuf>,
    /// domain=host:pref
    #[arg(long)]
    mx: Vec<String>,
    /// host=ip (A or AAAA)
    #[arg(long = "a")]
    addrs: Vec<String>,
    /// Extra zone lines, e.g. "gone.test NXDOMAIN".
    #[arg(long = "record")]
    records: Vec<String>,
    #[arg(long, default_value_t = 300)]
    ttl: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Send(a) => cmd_send(a),
        Cmd::Sink(a) => cmd_sink(a),
        Cmd::Dns(a) => cmd_dns(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

fn stderr_is_terminal() -> bool {
    // SAFETY: isatty has no preconditions.
    unsafe { libc::isatty(2) == 1 }
}

fn cmd_send(a: SendArgs) -> Result<ExitCode, String> {
    if !is_loopback(a.target.ip()) && !a.allow_remote {
        return Err(format!(
            "{} is not on loopback; add --allow-remote to load a remote server",
            a.target
        ));
    }
    if a.connections == 0 || a.rcpts_per_message == 0 {
        return Err("--connections and --rcpts-per-message must be at least 1".into());
    }
    let seed = a.seed.unwrap_or_else(ringpost::time::unix_micros);
    let domains = if a.domains.is_empty() {
        vec!["sink.test".to_string()]
    } else {
        a.domains.clone()
    };
    let domains = workload::Weighted::new(
        domains
            .iter()
            .map(|d| workload::parse_domain(d))
            .collect::<Result<_, _>>()?,
    )?;
    let messages = match (a.messages, a.duration) {
        (None, None) => Some(10_000),
        (m, _) => m,
    };
    let cfg = send::SendConfig {
        target: a.target,
        connections: a.connections,
        rate: a.rate,
        messages,
        duration: a.duration,
        shards: a.shards,
        sizes: workload::parse_size_mix(&a.size)?,
        rcpts_per_message: a.rcpts_per_message,
        domains,
        pipelining: a.pipelining == "on",
        starttls: a.starttls,
        one_message_per_connection: a.one_message_per_connection,
        seed,
        from: a.from,
        rcpt_local: a.rcpt_local,
        helo: a.helo,
        timeout: a.timeout,
    };
    eprintln!("loadgen send: seed {seed}");
    let live = Arc::new(send::Live::default());
    let done = Arc::new(AtomicBool::new(false));
    let progress = stderr_is_terminal().then(|| {
        let (live, done) = (Arc::clone(&live), Arc::clone(&done));
        std::thread::spawn(move || progress(&live, &done))
    });
    let outcome = send::run(cfg, live);
    done.store(true, Ordering::SeqCst);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let outcome = outcome?;
    print!("{}", outcome.report.human());
    if let Some(path) = a.json {
        let text = serde_json::to_string_pretty(&outcome.report).map_err(|e| e.to_string())?;
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = a.hgrm {
        std::fs::write(&path, report::hgrm(&outcome.message_histogram))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(if outcome.report.messages_accepted > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One refreshed line on the terminal, about once a second.
fn progress(live: &send::Live, done: &AtomicBool) {
    let t0 = Instant::now();
    let mut last = (0u64, Instant::now());
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if last.1.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let ok = live.accepted.load(Ordering::Relaxed);
        let rate = (ok - last.0) as f64 / last.1.elapsed().as_secs_f64();
        last = (ok, Instant::now());
        let p99 = live
            .latency
            .lock()
            .ok()
            .and_then(|h| h.as_ref().map(|h| h.value_at_quantile(0.99)))
            .unwrap_or(0);
        eprint!(
            "\r{:>5.0}s  sent {ok}  {rate:.0} msgs/s  failed {}  errors {}  p99 {:.2} ms   ",
            t0.elapsed().as_secs_f64(),
            live.failed.load(Ordering::Relaxed),
            live.errors.load(Ordering::Relaxed),
            p99 as f64 / 1000.0
        );
    }
    eprintln!();
}

fn parse_rates(list: &[String]) -> Result<std::collections::HashMap<String, f64>, String> {
    list.iter()
        .map(|v| {
            let (d, r) = v
                .split_once('=')
                .ok_or_else(|| format!("{v:?}: use domain=fraction"))?;
            Ok((
                d.to_ascii_lowercase(),
                r.parse::<f64>()
                    .map_err(|_| format!("{v:?}: bad fraction"))?,
            ))
        })
        .collect()
}

/// Installs SIGTERM/SIGINT (stop) and SIGUSR1 (report) flags.
fn signal_flags() -> Result<(Arc<AtomicBool>, Arc<AtomicBool>), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let usr1 = Arc::new(AtomicBool::new(false));
    for s in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(s, Arc::clone(&stop)).map_err(|e| e.to_string())?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&usr1))
        .map_err(|e| e.to_string())?;
    Ok((stop, usr1))
}

fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

fn cmd_sink(a: SinkArgs) -> Result<ExitCode, String> {
    for addr in &a.listen {
        if !is_loopback(addr.ip()) {
            return Err(format!(
                "--listen {addr}: the sink listens on loopback only"
            ));
        }
    }
    let cfg = sink::SinkConfig {
        listen: a.listen.clone(),
        shards: a.shards,
        hostname: a.hostname,
        lmtp: a.lmtp,
        starttls: !a.no_tls,
        cert: a.cert.zip(a.key),
        disabled: a.disabled.iter().map(|d| d.to_ascii_lowercase()).collect(),
        bdat_unimplemented: a.bdat_unimplemented,
        defer_rate: a.defer_rate,
        reject_rate: a.reject_rate,
        fail_at: if a.fail_at == "data" {
            sink::FailAt::Data
        } else {
            sink::FailAt::Rcpt
        },
        domain_defer: parse_rates(&a.domain_defer)?,
        domain_reject: parse_rates(&a.domain_reject)?,
        latency: a.latency,
        rtt: a.rtt,
        slow_latency: a.slow_latency,
        disconnect_rate: a.disconnect_rate,
        max_message_bytes: a.max_message_bytes,
        record: a.record,
        seed: a.seed,
        timeout: a.timeout,
    };
    let (stop, usr1) = signal_flags()?;
    let sink = sink::Sink::new(cfg)?;
    let watcher = {
        let sink = Arc::clone(&sink);
        let stats_file = a.stats.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(STATS_PERIOD);
                if usr1.swap(false, Ordering::SeqCst) {
                    eprintln!(
                        "loadgen sink: {}",
                        serde_json::to_string(&sink.stats()).unwrap_or_default()
                    );
                }
                if let Some(f) = &stats_file {
                    write_atomically(
                        f,
                        &serde_json::to_string_pretty(&sink.stats()).unwrap_or_default(),
                    );
                }
            }
            sink.stop.store(true, Ordering::SeqCst);
        })
    };
    let listen: Vec<String> = a.listen.iter().map(|l| l.to_string()).collect();
    let mode = if a.lmtp { "LMTP" } else { "SMTP" };
    sink.run(|| {
        println!("loadgen sink: listening on {} ({mode})", listen.join(", "));
        let _ = std::io::stdout().flush();
    })?;
    let _ = watcher.join();
    let stats = sink.stats();
    let json = serde_json::to_string_pretty(&stats).map_err(|e| e.to_string())?;
    if let Some(f) = &a.stats {
        write_atomically(f, &json);
    }
    if let Some(f) = &a.json {
        std::fs::write(f, &json).map_err(|e| format!("{}: {e}", f.display()))?;
    }
    let mean = if stats.connections_with_messages > 0 {
        stats.messages as f64 / stats.connections_with_messages as f64
    } else {
        0.0
    };
    println!(
        "loadgen sink: {} connections, {} messages ({} recipients, {} bytes); delivered {} messages / {} recipients, {} duplicated, {} corrupted, {} foreign; {:.1} messages per connection (max {})",
        stats.connections,
        stats.messages,
        stats.recipients,
        stats.bytes,
        stats.delivered_messages,
        stats.delivered_recipients,
        stats.duplicated,
        stats.corrupted,
        stats.foreign,
        mean,
        stats.max_messages_per_connection
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_dns(a: DnsArgs) -> Result<ExitCode, String> {
    if !is_loopback(a.listen.ip()) {
        return Err(format!(
            "--listen {}: the DNS server listens on loopback only",
            a.listen
        ));
    }
    let mut zone = dns::Zone::new(a.ttl);
    if let Some(path) = &a.zone {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for line in text.lines() {
            zone.add_line(line)?;
        }
    }
    for m in &a.mx {
        zone.add_mx_flag(m)?;
    }
    for addr in &a.addrs {
        zone.add_addr_flag(addr)?;
    }
    for r in &a.records {
        zone.add_line(r)?;
    }
    let (stop, _usr1) = signal_flags()?;
    let server = Arc::new(dns::DnsServer {
        zone,
        listen: a.listen,
        stats: dns::DnsStats::default(),
        stop: AtomicBool::new(false),
    });
    let watcher = {
        let server = Arc::clone(&server);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            server.stop.store(true, Ordering::SeqCst);
        })
    };
    server.run(|| {
        println!("loadgen dns: listening on {} (udp, tcp)", a.listen);
        let _ = std::io::stdout().flush();
    })?;
    let _ = watcher.join();
    println!(
        "loadgen dns: {} udp and {} tcp queries, {} malformed",
        server.stats.udp_queries.load(Ordering::Relaxed),
        server.stats.tcp_queries.load(Ordering::Relaxed),
        server.stats.malformed.load(Ordering::Relaxed)
    );
    Ok(ExitCode::SUCCESS)
}
