//! The `ringpost` command: `serve`, `check-config`, `queue`.

use clap::{Parser, Subcommand};
use ringpost::config::{Config, SitePools, SyncMode};
use ringpost::queue::{index::RcptState, recovery};
use ringpost::shard::{self, Startup};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a configuration error (a bad file, a bad key, a bad value).
const EXIT_CONFIG: u8 = 2;
/// How often the signal thread looks at the SIGHUP flag.
const SIGNAL_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Loads what the shards share: the TLS certificate and the AUTH users. Errors name the
/// file, and are start-up (config) errors.
fn build_shared(config: &Config) -> Result<shard::Shared, String> {
    let tls = match &config.tls {
        Some(t) => Some(Arc::new(ringpost::tls::Reloadable::load(&t.cert, &t.key)?)),
        None => None,
    };
    let users = match &config.auth {
        Some(a) => {
            if !a.users_file.exists() {
                return Err(format!(
                    "[auth] users_file {}: no such file (ringpost user add NAME --users-file ...)",
                    a.users_file.display()
                ));
            }
            Some(Arc::new(ringpost::auth::load(&a.users_file)?))
        }
        None => None,
    };
    let decoy = Arc::new(ringpost::auth::hash_password("decoy")?);
    Ok(shard::Shared {
        tls,
        users,
        decoy,
        board: Arc::default(),
        reloaded: std::sync::Mutex::new(Arc::new(config.clone())),
        generation: std::sync::atomic::AtomicU64::new(0),
    })
}

/// SIGHUP: the certificate, and the policy from the config file. What needs a restart
/// (listeners, queue, shards, tuning, TLS/AUTH/admin sections) is reported, not applied.
fn reload(shared: &shard::Shared, path: Option<&Path>) {
    if let Some(tls) = &shared.tls {
        match tls.reload() {
            Ok(()) => log::info!("SIGHUP: TLS certificate reloaded"),
            Err(e) => log::error!("SIGHUP: keeping the old TLS certificate: {e}"),
        }
    }
    let Some(path) = path else {
        log::info!("SIGHUP: running the embedded default config; nothing else to reload");
        return;
    };
    let new = match Config::load(Some(path)) {
        Ok(c) => c,
        Err(e) => {
            log::error!("SIGHUP: config not reloaded: {e}");
            return;
        }
    };
    let mut current = shared.reloaded.lock().unwrap_or_else(|e| e.into_inner());
    let mut delivery = current.delivery.clone();
    delivery.tls = new.delivery.tls;
    for (name, changed) in [
        (
            "[[listen]]",
            toml_of(&current.listen) != toml_of(&new.listen),
        ),
        ("[queue]", toml_of(&current.queue) != toml_of(&new.queue)),
        ("[tuning]", toml_of(&current.tuning) != toml_of(&new.tuning)),
        ("[tls]", toml_of(&current.tls) != toml_of(&new.tls)),
        ("[auth]", toml_of(&current.auth) != toml_of(&new.auth)),
        ("[admin]", toml_of(&current.admin) != toml_of(&new.admin)),
        ("[server]", toml_of(&current.server) != toml_of(&new.server)),
        (
            "[delivery] (but for tls)",
            toml_of(&delivery) != toml_of(&new.delivery),
        ),
    ] {
        if changed {
            log::warn!("SIGHUP: {name} changed; that takes effect after a restart");
        }
    }
    *current = Arc::new(new);
    shared
        .generation
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    log::info!("SIGHUP: policy reloaded from {}", path.display());
    log::logger().flush();
}

/// A config section's TOML form, to tell whether it changed (sections have no PartialEq).
fn toml_of<T: serde::Serialize>(v: &T) -> String {
    #[derive(serde::Serialize)]
    struct Wrap<'a, T: serde::Serialize> {
        v: &'a T,
    }
    toml::to_string(&Wrap { v }).unwrap_or_default()
}

#[derive(Parser)]
#[command(
    name = "ringpost",
    version,
    about = "A thread-per-core SMTP relay on io_uring"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Inspect this machine (cores, memory, the queue disk's fsync latency) and print a
    /// suggested profile.
    Tune {
        /// Where the queue will live (its disk is measured); default the config's or ./ringpost-queue.
        #[arg(long)]
        queue_dir: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Manage SMTP AUTH users (salted argon2 hashes).
    User {
        #[command(subcommand)]
        action: UserCmd,
        #[arg(long, global = true)]
        users_file: Option<PathBuf>,
    },
    /// Run the relay in the foreground; SIGTERM or SIGINT drains and exits 0.
    Serve {
        /// Config file; without it, the embedded tuning/default.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log lines as plain text or JSON objects.
        #[arg(long, default_value = "plain", value_parser = ["plain", "json"])]
        log_format: String,
    },
    /// Validate a config file and print the effective configuration.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Inspect the queue (reads the queue directory; safe while the server runs).
    Queue {
        #[command(subcommand)]
        action: QueueCmd,
        /// Config file naming the queue directory.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// The queue directory itself (instead of --config).
        #[arg(long, global = true)]
        queue_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add or change a user; the password is read from the first line of stdin.
    Add {
        name: String,
    },
    Remove {
        name: String,
    },
    List,
}

#[derive(Subcommand)]
enum QueueCmd {
    /// One line per queued message: id, age, size, state, sender, recipients.
    List {
        /// Only messages with a recipient not yet final in this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only messages in this state.
        #[arg(long, value_parser = ["ready", "deferred", "held"])]
        state: Option<String>,
        /// One JSON object per message, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Envelope and per-recipient state of one message; --body prints its content.
    Show {
        id: String,
        #[arg(long)]
        body: bool,
        #[arg(long)]
        json: bool,
    },
    /// Live messages and recipients by destination domain, oldest first (like qshape).
    Summary {
        #[arg(long)]
        json: bool,
    },
    /// Retry deferred mail now, for one domain or all (asks the running server through
    /// its [admin] endpoint).
    Flush { domain: Option<String> },
    /// Put a message on hold (kept, not delivered), through the admin endpoint.
    Hold { id: String },
    /// Release a held message: it is delivered at once.
    Release { id: String },
    /// Delete a message without a bounce.
    Delete { id: String },
    /// Return a message to its sender now (a DSN for every recipient not yet final).
    Bounce { id: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = matches!(&cli.command, Cmd::Serve { log_format, .. } if log_format == "json");
    ringpost::logging::install(json);
    match cli.command {
        Cmd::Serve { config, .. } => serve(config.as_deref()),
        Cmd::CheckConfig { config } => match Config::load(config.as_deref()) {
            Ok(c) => {
                print!("{}", c.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        Cmd::Tune { queue_dir, config } => {
            let dir = match queue_dir {
                Some(d) => d,
                None => match Config::load(config.as_deref()) {
                    Ok(c) => c.queue.dir,
                    Err(e) => return config_error(&e),
                },
            };
            let cpus = ringpost::shard::allowed_cpus();
            match ringpost::tune::measure_fsync(&dir) {
                Ok((p50, p99)) => {
                    let m = ringpost::tune::Machine {
                        cores: cpus.len(),
                        memory_bytes: ringpost::tune::memory_bytes(),
                        fsync_p50: p50,
                        fsync_p99: p99,
                        copy_on_write: ringpost::tune::copy_on_write(&dir),
                    };
                    print!("{}", ringpost::tune::suggest(&m, &cpus));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "ringpost: tune: cannot measure fsync in {}: {e}",
                        dir.display()
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::User { action, users_file } => match users_file {
            Some(f) => match user(&f, action) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ringpost: user: {e}");
                    ExitCode::FAILURE
                }
            },
            None => {
                eprintln!("ringpost: user: --users-file FILE is required");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Cmd::Queue {
            action,
            config,
            queue_dir,
        } => {
            let remote = match &action {
                QueueCmd::Flush { domain: Some(d) } => Some(format!("/queue/flush?domain={d}")),
                QueueCmd::Flush { domain: None } => Some("/queue/flush".to_string()),
                QueueCmd::Hold { id } => Some(format!("/queue/hold?id={id}")),
                QueueCmd::Release { id } => Some(format!("/queue/release?id={id}")),
                QueueCmd::Delete { id } => Some(format!("/queue/delete?id={id}")),
                QueueCmd::Bounce { id } => Some(format!("/queue/bounce?id={id}")),
                _ => None,
            };
            if let Some(path) = remote {
                return match Config::load(config.as_deref()) {
                    Ok(c) => admin_post(&c, &path),
                    Err(e) => config_error(&e),
                };
            }
            let dir = match queue_dir {
                Some(d) => d,
                None => match Config::load(config.as_deref()) {
                    Ok(c) => c.queue.dir,
                    Err(e) => return config_error(&e),
                },
            };
            match queue(&dir, action) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("ringpost: queue {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn config_error(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("ringpost: config error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// `[queue] sync = "auto"`: a few fsyncs on the queue disk pick inline or ring.
fn auto_sync(dir: &Path) -> SyncMode {
    match ringpost::tune::measure_fsync_n(dir, ringpost::tune::FSYNC_STARTUP_SAMPLES) {
        Ok((p50, _)) => {
            let mode = ringpost::tune::sync_mode_for(p50);
            eprintln!(
                "ringpost: queue sync {} (auto: fsync p50 {} us on {})",
                mode.name(),
                p50.as_micros(),
                dir.display()
            );
            mode
        }
        Err(e) => {
            eprintln!(
                "ringpost: cannot measure fsync on {}: {e}; queue sync ring",
                dir.display()
            );
            SyncMode::Ring
        }
    }
}

fn serve(path: Option<&Path>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let cpus = match config.shard_cpus(&ringpost::shard::allowed_cpus()) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    if let Err(e) = std::fs::create_dir_all(&config.queue.dir) {
        eprintln!(
            "ringpost: cannot create queue dir {}: {e}",
            config.queue.dir.display()
        );
        return ExitCode::FAILURE;
    }
    let mut config = config;
    if config.delivery.site_pools == SitePools::Auto {
        // Each shard resolves it the same way (shard::shard_delivery); this says which.
        eprintln!(
            "ringpost: site pools {} (auto: {} shards)",
            SitePools::Auto.for_shards(cpus.len()).name(),
            cpus.len()
        );
    }
    if config.queue.sync == SyncMode::Auto {
        config.queue.sync = auto_sync(&config.queue.dir);
    }
    raise_fd_limit();
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&shutdown)) {
            eprintln!("ringpost: cannot install signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let shared = match build_shared(&config) {
        Ok(s) => Arc::new(s),
        Err(e) => return config_error(&e),
    };
    let hup = Arc::new(AtomicBool::new(false));
    if signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup)).is_ok() {
        let shared = Arc::clone(&shared);
        let path = path.map(Path::to_path_buf);
        std::thread::spawn(move || loop {
            std::thread::sleep(SIGNAL_POLL);
            if hup.swap(false, std::sync::atomic::Ordering::SeqCst) {
                reload(&shared, path.as_deref());
                log::logger().flush();
            }
        });
    }
    let config = Arc::new(config);
    let listeners: Vec<String> = config
        .listen
        .iter()
        .map(|l| format!("{} ({:?})", l.addr, l.kind).to_lowercase())
        .collect();
    let result = shard::run(
        Arc::clone(&config),
        cpus.clone(),
        Arc::clone(&shutdown),
        shared,
        |startups| {
            for s in startups {
                if let Startup::Ready { shard, cpu, report } = s {
                    let place = match config.tuning.placement {
                        ringpost::config::ShardPlacement::Pinned => format!("on cpu {cpu}"),
                        ringpost::config::ShardPlacement::Floating => {
                            format!("floating over cpus {cpus:?}")
                        }
                    };
                    eprintln!(
                    "ringpost: shard {shard} {place}: recovered {} live messages from {} segments ({} bytes, {} message and {} outcome records) in {:.3}s ({:.0} records/s), deleted {} finished segments",
                    report.live_messages, report.segments, report.bytes, report.message_records, report.outcome_records,
                    report.elapsed.as_secs_f64(),
                    (report.message_records + report.outcome_records) as f64 / report.elapsed.as_secs_f64().max(1e-6),
                    report.deleted_segments
                );
                    for t in &report.torn {
                        eprintln!(
                        "ringpost: shard {shard}: {} at offset {}: {}; the last {} bytes were not acknowledged and are ignored",
                        t.path.display(), t.offset, t.error, t.ignored_bytes
                    );
                    }
                }
            }
            println!(
                "ringpost: ready: {} shards on cpus {:?}; listening on {}; queue in {}",
                cpus.len(),
                cpus,
                listeners.join(", "),
                config.queue.dir.display()
            );
            let _ = std::io::stdout().flush();
            sd_notify("READY=1\nSTATUS=accepting mail");
        },
    );
    match result {
        Ok(finished) => {
            sd_notify("STOPPING=1");
            for f in finished {
                let l = f.log;
                let avg = if l.commits > 0 {
                    l.records as f64 / l.commits as f64
                } else {
                    0.0
                };
                eprintln!(
                    "ringpost: shard {}: {} commits, {} records ({avg:.1} per commit), {} bytes, {} failed",
                    f.shard, l.commits, l.records, l.bytes, l.failed_commits
                );
                let d = f.delivery;
                eprintln!(
                    "ringpost: shard {}: delivery: {} connections, {} transactions ({} chained, {} chunked); {} delivered, {} deferred, {} failed",
                    f.shard, d.connections, d.transactions, d.chained, d.chunked, d.delivered, d.deferred, d.failed
                );
            }
            eprintln!("ringpost: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringpost: {e}");
            ExitCode::FAILURE
        }
    }
}

/// systemd's Type=notify readiness protocol (sd_notify(3)): a datagram to $NOTIFY_SOCKET.
fn sd_notify(state: &str) {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = sent {
        log::warn!("sd_notify: {e}");
    }
}

/// A relay holds a socket per session and per delivery connection: take the hard limit
/// on open files as the soft one (systemd's LimitNOFILE sets the hard one).
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a zeroed struct of plain integers.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// POST to the running server's admin endpoint.
fn admin_post(config: &Config, path: &str) -> ExitCode {
    use std::io::Read;
    let Some(admin) = &config.admin else {
        eprintln!(
            "ringpost: this queue command needs the server's [admin] listen address in the config"
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let auth = admin
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("POST {path} HTTP/1.1\r\nHost: ringpost\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    let reply = std::net::TcpStream::connect(admin.listen).and_then(|mut s| {
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        s.write_all(request.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    });
    match reply {
        Ok(r) if r.starts_with("HTTP/1.1 200") => {
            print!("{}", r.split_once("\r\n\r\n").map_or("", |(_, b)| b));
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("ringpost: queue flush: {}", r.lines().next().unwrap_or(""));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ringpost: queue flush: cannot reach {}: {e}", admin.listen);
            ExitCode::FAILURE
        }
    }
}

fn queue(dir: &Path, action: QueueCmd) -> std::io::Result<ExitCode> {
    let dirs: Vec<PathBuf> = recovery::shard_dirs(dir)?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let recovered = recovery::recover(&dirs, false)?;
    let now = ringpost::time::unix_micros();
    let mut entries: Vec<_> = recovered.index.live().collect();
    entries.sort_by_key(|e| (e.message.arrival_micros, e.message.id));
    let mut out = std::io::stdout().lock();
    match action {
        QueueCmd::Flush { .. }
        | QueueCmd::Hold { .. }
        | QueueCmd::Release { .. }
        | QueueCmd::Delete { .. }
        | QueueCmd::Bounce { .. } => Ok(ExitCode::FAILURE),
        QueueCmd::Summary { json } => {
            let domains = ringpost::metrics::domains_of(entries.iter().copied());
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&domains).unwrap_or_default()
                )?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut rows: Vec<_> = domains.iter().collect();
            rows.sort_by_key(|(_, s)| s.oldest_micros);
            writeln!(
                out,
                "{:<40} {:>9} {:>10} {:>12} {:>8}",
                "domain", "messages", "recipients", "bytes", "oldest"
            )?;
            for (d, s) in rows {
                writeln!(
                    out,
                    "{:<40} {:>9} {:>10} {:>12} {:>8}",
                    d,
                    s.messages,
                    s.recipients,
                    s.bytes,
                    age(now.saturating_sub(s.oldest_micros))
                )?;
            }
            writeln!(out, "-- {} messages", entries.len())?;
            Ok(ExitCode::SUCCESS)
        }
        QueueCmd::List {
            domain,
            state,
            json,
        } => {
            let domain = domain.map(|d| d.to_ascii_lowercase());
            if !json {
                writeln!(
                    out,
                    "{:<16}  {:>8}  {:>9}  {:<8}  {:<30}  recipients",
                    "id", "age", "size", "state", "sender"
                )?;
            }
            let mut shown = 0;
            for e in &entries {
                let m = &e.message;
                let pending: Vec<&str> = m
                    .envelope
                    .recipients
                    .iter()
                    .zip(&e.rcpt_states)
                    .filter(|(_, s)| !s.is_final())
                    .map(|(r, _)| r.address.as_str())
                    .collect();
                let here = match &domain {
                    Some(d) => pending.iter().any(|a| {
                        a.rsplit_once('@')
                            .is_some_and(|(_, x)| x.eq_ignore_ascii_case(d))
                    }),
                    None => true,
                };
                let st = message_state(e);
                if !here || state.as_deref().is_some_and(|s| s != st) {
                    continue;
                }
                shown += 1;
                let sender = if m.envelope.sender.is_empty() {
                    "<>"
                } else {
                    &m.envelope.sender
                };
                if json {
                    let v = serde_json::json!({
                        "id": m.id.to_string(),
                        "arrival": m.arrival_micros / 1_000_000,
                        "size": m.content_len,
                        "state": st,
                        "sender": m.envelope.sender,
                        "pending": pending,
                        "last_reply": e.last_reply,
                    });
                    writeln!(out, "{v}")?;
                } else {
                    writeln!(
                        out,
                        "{:<16}  {:>8}  {:>9}  {:<8}  {:<30}  {}",
                        m.id.to_string(),
                        age(now.saturating_sub(m.arrival_micros)),
                        m.content_len,
                        st,
                        sender,
                        pending.join(" ")
                    )?;
                }
            }
            if !json {
                writeln!(out, "-- {shown} messages")?;
                for t in &recovered.torn {
                    writeln!(
                        out,
                        "-- {}: torn tail at offset {} ({})",
                        t.path.display(),
                        t.offset,
                        t.error
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        QueueCmd::Show { id, body, json } => {
            let Some(e) =
                ringpost::queue::record::QueueId::parse(&id).and_then(|id| recovered.index.get(id))
            else {
                eprintln!("ringpost: no queued message {id}");
                return Ok(ExitCode::FAILURE);
            };
            let m = &e.message;
            if json {
                let rcpts: Vec<serde_json::Value> = m
                    .envelope
                    .recipients
                    .iter()
                    .zip(&e.rcpt_states)
                    .map(|(r, s)| {
                        let (state, next) = match s {
                            RcptState::Pending => ("pending", None),
                            RcptState::Deferred { until_micros } => ("deferred", Some(until_micros / 1_000_000)),
                            RcptState::Delivered => ("delivered", None),
                            RcptState::Failed => ("failed", None),
                        };
                        serde_json::json!({"address": r.address, "state": state, "next_attempt": next, "orcpt": r.orcpt})
                    })
                    .collect();
                let v = serde_json::json!({
                    "id": m.id.to_string(), "arrival": m.arrival_micros / 1_000_000, "client": m.client, "helo": m.helo,
                    "sender": m.envelope.sender, "size": m.content_len, "state": message_state(e),
                    "recipients": rcpts, "last_reply": e.last_reply,
                });
                writeln!(out, "{v}")?;
                return Ok(ExitCode::SUCCESS);
            }
            writeln!(
                out,
                "id: {}\narrival: {}\nclient: {} ({})",
                m.id,
                ringpost::time::rfc5322(m.arrival_micros / 1_000_000),
                m.client,
                m.helo
            )?;
            writeln!(
                out,
                "sender: <{}>\nsize: {}",
                m.envelope.sender, m.content_len
            )?;
            if e.held {
                writeln!(out, "state: held")?;
            }
            for (r, s) in m.envelope.recipients.iter().zip(&e.rcpt_states) {
                let state = match s {
                    RcptState::Pending => "pending".to_string(),
                    RcptState::Deferred { until_micros } => {
                        format!(
                            "deferred, next attempt {}",
                            ringpost::time::rfc5322(until_micros / 1_000_000)
                        )
                    }
                    RcptState::Delivered => "delivered".to_string(),
                    RcptState::Failed => "failed".to_string(),
                };
                writeln!(out, "recipient: <{}> {state}", r.address)?;
            }
            if let Some(reply) = &e.last_reply {
                writeln!(out, "last reply: {reply}")?;
            }
            if body {
                let seg = &recovered.segments[e.home as usize];
                let image = std::fs::read(seg)?;
                let at = e.content_offset() as usize;
                let wire = image
                    .get(at..at + m.content_len as usize)
                    .unwrap_or_default();
                writeln!(out)?;
                // Stored dot-stuffed (wire form); shown as the sender meant it.
                out.write_all(&ringpost::smtp::data::unstuff(wire))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn user(file: &Path, action: UserCmd) -> Result<(), String> {
    let mut users = ringpost::auth::load(file)?;
    match action {
        UserCmd::Add { name } => {
            if !ringpost::auth::valid_user(&name) {
                return Err(format!(
                    "{name:?} is not a valid user name (no spaces or ':')"
                ));
            }
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .map_err(|e| e.to_string())?;
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                return Err("empty password on stdin".into());
            }
            users.insert(name.clone(), ringpost::auth::hash_password(password)?);
            ringpost::auth::save(file, &users)?;
            println!("user {name} saved in {}", file.display());
        }
        UserCmd::Remove { name } => {
            if users.remove(&name).is_none() {
                return Err(format!("no user {name}"));
            }
            ringpost::auth::save(file, &users)?;
            println!("user {name} removed");
        }
        UserCmd::List => {
            for u in users.keys() {
                println!("{u}");
            }
        }
    }
    Ok(())
}

/// held, deferred (a recipient waits for a retry) or ready.
fn message_state(e: &ringpost::queue::index::Entry) -> &'static str {
    if e.held {
        "held"
    } else if e
        .rcpt_states
        .iter()
        .any(|s| matches!(s, RcptState::Deferred { .. }))
    {
        "deferred"
    } else {
        "ready"
    }
}

fn age(micros: u64) -> String {
    let s = micros / 1_000_000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}
