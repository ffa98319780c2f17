//! The configuration schema, its defaults and its validation.
//!
//! TOML, `deny_unknown_fields` everywhere so that a typo is an error naming the key rather
//! than a silently ignored setting. `tuning/default.toml` is embedded in the binary and is
//! what `ringpost serve` runs without `--config`. Every bound the relay enforces is a field
//! here, with its unit in the name or in its type.

pub mod cidr;
pub mod duration;

pub use cidr::Cidr;

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The embedded default configuration (`tuning/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("../../tuning/default.toml");

/// RFC 5321 4.5.3.1.4: a command line is at most 512 octets including CRLF. Some clients
/// exceed it with many ESMTP parameters, so it is configurable, within a sane ceiling.
pub const COMMAND_LINE_BYTES_MIN: usize = 512;
pub const COMMAND_LINE_BYTES_CEILING: usize = 64 * 1024;
/// The read buffer holds at least two command lines: one being framed, room to read more.
pub const READ_BUFFER_LINES_MIN: usize = 2;
/// Default per-session read buffer: small, because idle sessions are many.
pub const READ_BUFFER_BYTES_DEFAULT: usize = 16 * 1024;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub listen: Vec<Listen>,
    /// TLS certificates (STARTTLS, smtps). Not served yet: see README "Status".
    pub tls: Option<Tls>,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub forward: Vec<Forward>,
    #[serde(default)]
    pub list: Vec<List>,
    #[serde(default)]
    pub queue: Queue,
    #[serde(default)]
    pub delivery: Delivery,
    #[serde(default)]
    pub route: Vec<Route>,
    /// Admin HTTP endpoint. Not served yet: see README "Status".
    pub admin: Option<Admin>,
    /// SMTP AUTH users. Not served yet: see README "Status".
    pub auth: Option<Auth>,
    #[serde(default)]
    pub tuning: Tuning,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Our name in the greeting, EHLO reply and Received headers.
    pub hostname: String,
    /// Where mail to `<Postmaster>` (no domain) is routed.
    pub postmaster: String,
    /// Idle time allowed between commands before `421 4.4.2` and close.
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// Idle time allowed between reads of message content.
    #[serde(with = "duration")]
    pub data_timeout: Duration,
    /// On SIGTERM/SIGINT: how long open sessions may go on before they get `421` and close.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Open sessions per shard; one more gets `421 4.7.0` at the greeting.
    pub max_connections: u32,
    /// Open sessions from one client IP address, per shard.
    pub max_connections_per_ip: u32,
    /// In message content, the slowest transfer allowed, in octets per second: each read
    /// extends the content deadline by its length at this rate, never past
    /// `data_timeout` from now (Postfix's `smtpd_min_data_rate`). 0: `data_timeout` per read.
    pub min_data_rate: u32,
    /// Wait this long before the greeting; a client that talks first gets `554 5.5.1`
    /// (sendmail's greet_pause, postscreen's pregreet test). 0: greet at once.
    #[serde(with = "duration")]
    pub greet_pause: Duration,
    /// Errors (syntax, sequence, policy) one session may make before `421` and close.
    pub max_errors: u32,
    /// NOOP, RSET, VRFY, EXPN, HELP and ETRN a session may send (since its last accepted
    /// message) before each one more counts as an error (Postfix's
    /// `smtpd_junk_command_limit`).
    pub max_junk_commands: u32,
    /// Longest command line accepted, in octets including CRLF.
    pub command_line_bytes_max: usize,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            hostname: "localhost".into(),
            postmaster: "postmaster@localhost".into(),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            shutdown_grace: Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_ip: 200,
            min_data_rate: 500,
            greet_pause: Duration::ZERO,
            max_errors: 10,
            max_junk_commands: 100,
            command_line_bytes_max: COMMAND_LINE_BYTES_MIN,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenKind {
    Smtp,
    Submission,
    Smtps,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub addr: SocketAddr,
    #[serde(default = "default_listen_kind")]
    pub kind: ListenKind,
}

fn default_listen_kind() -> ListenKind {
    ListenKind::Smtp
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Vrfy {
    Off,
    On,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expn {
    Off,
    Trusted,
    On,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Domains accepted from anyone. A leading dot (".example.test") matches subdomains.
    pub relay_domains: Vec<String>,
    /// Clients that may relay to any domain; also the trusted clients for ETRN and
    /// `expn = "trusted"`.
    pub relay_networks: Vec<Cidr>,
    pub max_message_bytes: u64,
    pub max_recipients: u32,
    /// More `Received:` headers than this is a mail loop: `554 5.4.6`.
    pub max_hops: u32,
    pub vrfy: Vrfy,
    pub expn: Expn,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            relay_domains: Vec::new(),
            relay_networks: vec![Cidr::parse("127.0.0.0/8").expect("valid literal")],
            max_message_bytes: 26_214_400,
            max_recipients: 1000,
            max_hops: 100,
            vrfy: Vrfy::Off,
            expn: Expn::Off,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMode {
    Forward,
    Moved,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    pub from: String,
    pub to: String,
    #[serde(default = "default_forward_mode")]
    pub mode: ForwardMode,
}

fn default_forward_mode() -> ForwardMode {
    ForwardMode::Forward
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct List {
    pub address: String,
    pub members: Vec<String>,
}

/// The longest `[queue] outcome_delay`: past it only the duplicate window grows.
pub const OUTCOME_DELAY_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Queue {
    pub dir: PathBuf,
    /// A segment file is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// How long the committer waits for more appends before writing a batch. Zero means
    /// natural group commit: whatever arrived while the previous sync ran goes together.
    #[serde(with = "duration")]
    pub commit_window: Duration,
    /// Largest batch written with one write and one fdatasync.
    pub commit_bytes_max: usize,
    /// Where a commit's fdatasync runs: `inline` on the shard's own thread (the shard
    /// waits, as the sessions of the batch do anyway); `ring` through io_uring, whose
    /// worker thread shares the shard's core and waits behind it when the shard is busy.
    /// Inline wins when fsync is fast (SSD, NVMe, a battery-backed cache); ring keeps a
    /// shard working through a slow one. `auto` measures the queue disk at start-up and
    /// picks (as `ringpost tune` does).
    pub sync: SyncMode,
    /// How far ahead of the last record the active segment is kept written with zeros.
    /// A segment is reserved with fallocate, whose blocks are "unwritten": the first write
    /// into one changes the file's extent map, and every fdatasync then commits the
    /// filesystem journal too. Zeros written ahead (as part of a commit, one chunk of this
    /// size each time the records reach the end of the previous one) make the next
    /// commits plain data writes (ext4 here: a fifth less fdatasync latency under load).
    /// 0 turns it off (copy-on-write file systems, where it cannot help).
    pub zero_ahead_bytes: u64,
    /// How long delivery outcomes (delivered, deferred, failed) alone may wait for a new
    /// message to share its fdatasync before they get one of their own. Nobody waits on an
    /// outcome's sync: the record keeps a delivered message from going out again after a
    /// crash, so this is the window in which a crash repeats a delivery. Under load
    /// outcomes then ride with the next message's commit and cost no sync: for a disk with
    /// an IOPS budget. 0 (the default) syncs each batch of outcomes at once.
    #[serde(with = "duration")]
    pub outcome_delay: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SitePools {
    Auto,
    Shard,
    Owner,
}

/// With `site_pools = "auto"`, up to this many shards keep one pool per site on its owner
/// shard. Delivery is about a third of a relayed message's work (a third of the user
/// time and a quarter of the writes in one shard's profile, README "Sites"), so one
/// site's delivery for every shard fits on one core beside that core's own accepting
/// with two shards, not with 8-64.
pub const OWNER_POOLS_SHARDS_MAX: usize = 2;

impl SitePools {
    /// What `auto` means for this many shards; the other two mean themselves.
    pub fn for_shards(self, shards: usize) -> SitePools {
        match self {
            SitePools::Auto if shards <= OWNER_POOLS_SHARDS_MAX => SitePools::Owner,
            SitePools::Auto => SitePools::Shard,
            fixed => fixed,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SitePools::Auto => "auto",
            SitePools::Shard => "shard",
            SitePools::Owner => "owner",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Auto,
    Inline,
    Ring,
}

impl SyncMode {
    /// The config word for the mode.
    pub fn name(self) -> &'static str {
        match self {
            SyncMode::Auto => "auto",
            SyncMode::Inline => "inline",
            SyncMode::Ring => "ring",
        }
    }
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            dir: PathBuf::from("./ringpost-queue"),
            segment_bytes: 64 * 1024 * 1024,
            commit_window: Duration::ZERO,
            commit_bytes_max: 4 * 1024 * 1024,
            sync: SyncMode::Auto,
            zero_ahead_bytes: 256 * 1024,
            outcome_delay: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// DNS servers for MX lookups; empty means those of /etc/resolv.conf.
    pub dns: Vec<SocketAddr>,
    pub port: u16,
    #[serde(with = "duration")]
    pub retry_initial: Duration,
    #[serde(with = "duration")]
    pub retry_max: Duration,
    #[serde(with = "duration")]
    pub max_age: Duration,
    /// Connections per site, opened only while mail waits. 32, KumoMTA's default: a
    /// relay's outbound side keeps up with 50 busy inbound sessions (with 16 mail queues
    /// up: see `benches/ab.sh` in the README); a receiver that wants fewer says 421, and
    /// that is a deferral.
    pub max_connections_per_host: u32,
    /// Where a site's connections live. `owner`: one ready queue and pool per site on the
    /// shard its key hashes to; mail for it crosses there and the outcome back.
    /// `max_connections_per_host` is then the limit for the whole relay (as Postfix's
    /// destination concurrency is), and all the site's mail lands in one queue, so busy
    /// connections find the next message waiting and chain it behind their content.
    /// `shard`: every shard delivers the mail it accepted over its own pool, with the limit
    /// divided among the shards (at least one each): one busy site (a smarthost, a big
    /// mailbox provider) is delivered from every core instead of one. `auto` (the
    /// default): `owner` up to [`OWNER_POOLS_SHARDS_MAX`] shards, `shard` beyond.
    pub site_pools: SitePools,
    pub max_messages_per_connection: u32,
    pub max_recipients_per_transaction: u32,
    /// Send content as one `BDAT n LAST` chunk right behind MAIL and RCPT (RFC 3030, with
    /// PIPELINING) to a next hop that offers CHUNKING: one write and one round trip for a
    /// message that starts a transaction on its own, where DATA waits for 354 first.
    /// Messages chained behind another's content keep DATA, and so does content beyond
    /// `BDAT_CONTENT_BYTES_MAX` and LMTP.
    pub chunking: bool,
    /// An idle outbound connection is closed (QUIT) after this long without work.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Waiting for any reply but the one after the content.
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// Waiting for the reply after the content (the remote may be scanning it).
    #[serde(with = "duration")]
    pub data_timeout: Duration,
    /// One DNS query's wait for an answer; each server is tried `dns_attempts` times.
    #[serde(with = "duration")]
    pub dns_timeout: Duration,
    pub dns_attempts: u32,
    /// How long "no such domain" and "no such record" answers are cached.
    #[serde(with = "duration")]
    pub negative_ttl: Duration,
    /// Outbound STARTTLS: "opportunistic" (default), "required" or "none".
    pub tls: OutboundTls,
    /// Extra CA certificates (PEM) trusted for `tls = "required"`, besides the system's.
    pub tls_ca_file: Option<PathBuf>,
    /// Send a "delayed" DSN once a message has waited this long; "0s" = never.
    #[serde(with = "duration")]
    pub delay_warning: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboundTls {
    /// Never STARTTLS.
    None,
    /// STARTTLS when offered, certificate not checked (RFC 7435); plain text otherwise.
    Opportunistic,
    /// STARTTLS with a verified certificate for the host name, or defer (4.7.x).
    Required,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            dns: Vec::new(),
            port: 25,
            retry_initial: Duration::from_secs(300),
            retry_max: Duration::from_secs(3600),
            max_age: Duration::from_secs(5 * 86400),
            max_connections_per_host: 32,
            site_pools: SitePools::Auto,
            max_messages_per_connection: 1000,
            max_recipients_per_transaction: 100,
            chunking: true,
            idle_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            dns_timeout: Duration::from_secs(5),
            dns_attempts: 2,
            negative_ttl: Duration::from_secs(60),
            tls: OutboundTls::Opportunistic,
            tls_ca_file: None,
            delay_warning: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub domain: String,
    pub smarthost: Option<String>,
    pub lmtp: Option<String>,
    /// TLS policy for this destination; default `[delivery] tls`.
    pub tls: Option<OutboundTls>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// HTTP: GET /metrics, GET /queue/summary, POST /queue/flush. Loopback is wise.
    pub listen: SocketAddr,
    /// When set, requests need `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// `user:$argon2id$...` lines, managed with `ringpost user add|remove|list`.
    pub users_file: PathBuf,
    /// Offer AUTH without TLS to clients on loopback (tests, local submission).
    #[serde(default)]
    pub allow_plaintext_loopback: bool,
    /// Failed AUTH attempts one client IP may make within `failure_window` (per shard).
    #[serde(default = "default_auth_failures_max")]
    pub failures_max: u32,
    #[serde(default = "default_auth_failure_window", with = "duration")]
    pub failure_window: Duration,
}

fn default_auth_failures_max() -> u32 {
    5
}

fn default_auth_failure_window() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tuning {
    /// Number of shards; 0 means one per CPU this process may run on.
    pub shards: usize,
    /// CPUs to pin shards to, in shard order; empty means the allowed CPUs in order.
    pub cpus: Vec<usize>,
    /// Submission queue entries of each shard's io_uring.
    pub ring_depth: usize,
    /// io_uring-registered (locked) buffer memory per shard. It backs glommio's own
    /// buffers (UDP receives of DNS answers, socket peeks); the queue log goes through the
    /// page cache. Past it glommio falls back to ordinary allocations.
    pub io_memory_bytes: usize,
    /// Per-session read buffer.
    pub read_buffer_bytes: usize,
    /// How long a task may run before the executor checks for other work.
    #[serde(with = "duration")]
    pub preempt_timer: Duration,
    /// Slots in each cross-shard channel (jobs and outcomes with `site_pools = "owner"`,
    /// ETRN and operator commands always). Every ordered pair of shards has one, each slot
    /// preallocated (about 136 octets): 0 sizes them to fit the mesh in 64 MiB.
    pub mesh_capacity: usize,
    /// Shortest round of a shard's event loop while the shard is busy and tasks wait for
    /// a CPU: a round that ends sooner sleeps the rest (src/shard/pace.rs). 0: never.
    #[serde(with = "duration")]
    pub loop_period: Duration,
    /// Pace only while tasks waited for a CPU at least this percent of the time
    /// (`/proc/pressure/cpu`, "some"); 0: whenever the shard is busy.
    pub loop_pace_cpu_pressure: u32,
    /// Where a shard's thread runs (src/shard/placement.rs): `pinned` to its CPU, or
    /// `floating` over the shards' CPUs (machines whose cores other busy programs share).
    pub placement: ShardPlacement,
}

/// Where shards run; see [`Tuning::placement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardPlacement {
    Pinned,
    Floating,
}

impl ShardPlacement {
    /// The config word.
    pub fn name(self) -> &'static str {
        match self {
            ShardPlacement::Pinned => "pinned",
            ShardPlacement::Floating => "floating",
        }
    }
}

/// Longest `[tuning] loop_period`: beyond it sessions wait more than pacing saves.
pub const LOOP_PERIOD_MAX: Duration = Duration::from_millis(5);

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            shards: 0,
            cpus: Vec::new(),
            ring_depth: 128,
            io_memory_bytes: 1024 * 1024,
            read_buffer_bytes: READ_BUFFER_BYTES_DEFAULT,
            preempt_timer: Duration::from_millis(10),
            mesh_capacity: 0,
            loop_period: Duration::from_micros(250),
            loop_pace_cpu_pressure: 10,
            placement: ShardPlacement::Pinned,
        }
    }
}

/// A configuration error: the message names the file and the key.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Loads `path`, or the embedded default when `path` is None.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Config::parse(DEFAULT_TOML, "tuning/default.toml (embedded)"),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError(format!("{}: cannot read: {e}", p.display())))?;
                Config::parse(&text, &p.display().to_string())
            }
        }
    }

    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError(format!("{origin}: {}", e.to_string().trim_end())))?;
        config
            .validate()
            .map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let s = &self.server;
        if s.hostname.is_empty() || !crate::smtp::address::is_domain(s.hostname.as_bytes(), false) {
            return Err(format!(
                "[server] hostname {:?} is not a domain name",
                s.hostname
            ));
        }
        if !is_plain_address(&s.postmaster) {
            return Err(format!(
                "[server] postmaster {:?} is not local@domain",
                s.postmaster
            ));
        }
        for (key, v) in [
            ("command_timeout", s.command_timeout),
            ("data_timeout", s.data_timeout),
        ] {
            if v.is_zero() {
                return Err(format!("[server] {key} must be more than zero"));
            }
        }
        for (key, v) in [
            ("max_connections", s.max_connections),
            ("max_connections_per_ip", s.max_connections_per_ip),
            ("max_errors", s.max_errors),
            ("max_junk_commands", s.max_junk_commands),
        ] {
            if v == 0 {
                return Err(format!("[server] {key} must be at least 1"));
            }
        }
        if !(COMMAND_LINE_BYTES_MIN..=COMMAND_LINE_BYTES_CEILING)
            .contains(&s.command_line_bytes_max)
        {
            return Err(format!(
                "[server] command_line_bytes_max must be {COMMAND_LINE_BYTES_MIN}..={COMMAND_LINE_BYTES_CEILING}"
            ));
        }
        if self.listen.is_empty() {
            return Err("no [[listen]] address: add one, e.g. addr = \"127.0.0.1:2525\"".into());
        }
        let mut seen = HashSet::new();
        for l in &self.listen {
            if !seen.insert(l.addr) {
                return Err(format!("[[listen]] addr {} appears twice", l.addr));
            }
            if l.kind == ListenKind::Smtps && self.tls.is_none() {
                return Err(format!(
                    "[[listen]] {}: kind \"smtps\" needs a [tls] cert and key",
                    l.addr
                ));
            }
            if l.kind == ListenKind::Submission && self.auth.is_none() {
                return Err(format!(
                    "[[listen]] {}: kind \"submission\" needs [auth] users_file",
                    l.addr
                ));
            }
        }
        self.validate_policy()?;
        self.validate_queue()?;
        self.validate_delivery()?;
        self.validate_tuning()
    }

    fn validate_policy(&self) -> Result<(), String> {
        let p = &self.policy;
        for d in &p.relay_domains {
            let bare = d.strip_prefix('.').unwrap_or(d);
            if !crate::smtp::address::is_domain(bare.as_bytes(), true) {
                return Err(format!("[policy] relay_domains: {d:?} is not a domain"));
            }
        }
        if p.max_message_bytes == 0 || p.max_recipients == 0 || p.max_hops == 0 {
            return Err(
                "[policy] max_message_bytes, max_recipients and max_hops must be at least 1".into(),
            );
        }
        let mut addresses = HashSet::new();
        for f in &self.forward {
            for (key, a) in [("from", &f.from), ("to", &f.to)] {
                if !is_plain_address(a) {
                    return Err(format!("[[forward]] {key} = {a:?} is not local@domain"));
                }
            }
            if !addresses.insert(f.from.to_ascii_lowercase()) {
                return Err(format!("[[forward]] from = {:?} appears twice", f.from));
            }
        }
        for l in &self.list {
            if !is_plain_address(&l.address) {
                return Err(format!(
                    "[[list]] address = {:?} is not local@domain",
                    l.address
                ));
            }
            if !addresses.insert(l.address.to_ascii_lowercase()) {
                return Err(format!(
                    "[[list]] address = {:?} is also a forward or another list",
                    l.address
                ));
            }
            if l.members.is_empty() {
                return Err(format!("[[list]] {:?} has no members", l.address));
            }
            if let Some(m) = l.members.iter().find(|m| !is_plain_address(m)) {
                return Err(format!(
                    "[[list]] {:?}: member {m:?} is not local@domain",
                    l.address
                ));
            }
        }
        Ok(())
    }

    fn validate_queue(&self) -> Result<(), String> {
        let q = &self.queue;
        if q.dir.as_os_str().is_empty() {
            return Err("[queue] dir is empty".into());
        }
        if q.segment_bytes < 1024 * 1024 {
            return Err("[queue] segment_bytes must be at least 1048576 (1 MiB)".into());
        }
        if q.commit_bytes_max < 64 * 1024 {
            return Err("[queue] commit_bytes_max must be at least 65536".into());
        }
        if q.zero_ahead_bytes > q.segment_bytes {
            return Err("[queue] zero_ahead_bytes must be at most segment_bytes".into());
        }
        if q.commit_window > Duration::from_millis(100) {
            return Err(
                "[queue] commit_window above 100ms only adds latency; use at most \"100ms\"".into(),
            );
        }
        if q.outcome_delay > OUTCOME_DELAY_MAX {
            let max = OUTCOME_DELAY_MAX.as_millis();
            return Err(format!(
                "[queue] outcome_delay above {max}ms only widens the duplicate window after a crash; use at most \"{max}ms\""
            ));
        }
        Ok(())
    }

    fn validate_delivery(&self) -> Result<(), String> {
        let d = &self.delivery;
        if d.retry_initial.is_zero() || d.retry_max < d.retry_initial {
            return Err("[delivery] retry_initial must be > 0 and at most retry_max".into());
        }
        if d.max_connections_per_host == 0
            || d.max_messages_per_connection == 0
            || d.max_recipients_per_transaction == 0
        {
            return Err(
                "[delivery] connection, message and recipient limits must be at least 1".into(),
            );
        }
        for r in &self.route {
            if r.smarthost.is_some() == r.lmtp.is_some() {
                return Err(format!(
                    "[[route]] {:?}: set exactly one of smarthost or lmtp",
                    r.domain
                ));
            }
        }
        Ok(())
    }

    fn validate_tuning(&self) -> Result<(), String> {
        let t = &self.tuning;
        if !t.cpus.is_empty() && t.shards > t.cpus.len() {
            return Err(format!(
                "[tuning] shards = {} but only {} cpus listed",
                t.shards,
                t.cpus.len()
            ));
        }
        let min = READ_BUFFER_LINES_MIN * self.server.command_line_bytes_max;
        if t.read_buffer_bytes < min {
            return Err(format!("[tuning] read_buffer_bytes must be at least {min} (twice [server] command_line_bytes_max)"));
        }
        if t.ring_depth < 8 || !t.ring_depth.is_power_of_two() {
            return Err("[tuning] ring_depth must be a power of two, at least 8".into());
        }
        if t.loop_period > LOOP_PERIOD_MAX {
            return Err(format!(
                "[tuning] loop_period must be at most {}us (0 turns pacing off)",
                LOOP_PERIOD_MAX.as_micros()
            ));
        }
        if t.loop_pace_cpu_pressure > 100 {
            return Err("[tuning] loop_pace_cpu_pressure is a percent: 0 to 100".into());
        }
        Ok(())
    }

    /// The effective configuration, defaults filled in, as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }

    /// The CPUs the shards run on, one per shard, in shard order.
    pub fn shard_cpus(&self, allowed: &[usize]) -> Result<Vec<usize>, ConfigError> {
        let t = &self.tuning;
        let pool: Vec<usize> = if t.cpus.is_empty() {
            allowed.to_vec()
        } else {
            t.cpus.clone()
        };
        if let Some(bad) = pool.iter().find(|c| !allowed.contains(c)) {
            return Err(ConfigError(format!(
                "[tuning] cpus: cpu {bad} is not available to this process (allowed: {allowed:?})"
            )));
        }
        let n = if t.shards == 0 { pool.len() } else { t.shards };
        if n == 0 {
            return Err(ConfigError("no CPU available to run a shard".into()));
        }
        // More shards than CPUs is allowed (useful on small machines for testing); they
        // share cores round-robin.
        Ok((0..n).map(|i| pool[i % pool.len()]).collect())
    }
}

/// "host:port", "[ip]:port" or "ip:port"; the host without brackets.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// `local@domain` with a dot-atom local part: what forward/list/postmaster entries hold.
pub fn is_plain_address(a: &str) -> bool {
    match a.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && local.split('.').all(|atom| {
                    !atom.is_empty() && atom.bytes().all(crate::smtp::address::is_atext)
                })
                && crate::smtp::address::is_domain(domain.as_bytes(), true)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.listen[0].addr, "127.0.0.1:2525".parse().unwrap());
        assert_eq!(c.queue.dir, PathBuf::from("./ringpost-queue"));
        assert_eq!(c.tuning.shards, 0);
    }

    #[test]
    fn site_pools_auto_owns_sites_on_few_shards_and_splits_them_on_many() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.delivery.site_pools, SitePools::Auto);
        assert_eq!(SitePools::Auto.for_shards(1), SitePools::Owner);
        assert_eq!(
            SitePools::Auto.for_shards(OWNER_POOLS_SHARDS_MAX),
            SitePools::Owner
        );
        assert_eq!(
            SitePools::Auto.for_shards(OWNER_POOLS_SHARDS_MAX + 1),
            SitePools::Shard
        );
        assert_eq!(SitePools::Shard.for_shards(1), SitePools::Shard);
        assert_eq!(SitePools::Owner.for_shards(64), SitePools::Owner);
        let owner = Config::parse(
            "[[listen]]\naddr = \"127.0.0.1:25\"\n[delivery]\nsite_pools = \"owner\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(owner.delivery.site_pools, SitePools::Owner);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse(
            "[[listen]]\naddr = \"127.0.0.1:25\"\n[policy]\nrelay_domain = []\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(e.0.contains("relay_domain"), "{e}");
        assert!(e.0.contains("t.toml"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let base = "[[listen]]\naddr = \"127.0.0.1:25\"\n";
        for (extra, key) in [
            ("[server]\ncommand_timeout = \"5\"\n", "command_timeout"),
            (
                "[policy]\nrelay_networks = [\"10.0.0.1/8\"]\n",
                "10.0.0.1/8",
            ),
            ("[server]\nmax_errors = 0\n", "max_errors"),
            ("[[forward]]\nfrom = \"a\"\nto = \"b@c.test\"\n", "from"),
            ("[tuning]\nshards = 3\ncpus = [0]\n", "shards"),
            ("[queue]\noutcome_delay = \"2s\"\n", "outcome_delay"),
        ] {
            let e = Config::parse(&format!("{base}{extra}"), "t.toml").unwrap_err();
            assert!(e.0.contains(key), "{extra}: {e}");
        }
    }

    #[test]
    fn shard_cpus() {
        let mut c = Config::load(None).unwrap();
        assert_eq!(c.shard_cpus(&[0, 1]).unwrap(), vec![0, 1]);
        c.tuning.shards = 3;
        assert_eq!(c.shard_cpus(&[0, 1]).unwrap(), vec![0, 1, 0]);
        c.tuning.cpus = vec![5];
        assert!(c.shard_cpus(&[0, 1]).is_err());
    }
}
