//! Test harness: the real `ringpost` binary on a free loopback port, and a small blocking
//! SMTP client. Everything a test needs (queue directory, config, port) is made here.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Bound on any single wait in the tests: a hung server fails the test, not CI.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_ringpost")
}

/// A scratch directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ringpost-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The kernel tears down a dead process's io_uring (and the listening sockets its pending
/// accepts hold) after the process is reaped. Until then a SO_REUSEPORT sibling may still
/// take connections, only to reset them; so wait until no socket listens on `port`.
pub fn wait_until_not_listening(port: u16) {
    let needle = format!(":{port:04X} 00000000:0000 0A");
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let listening = ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .contains(&needle)
        });
        if !listening {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("port {port} still has a listener");
}

/// `ringpost CMD --config bad.toml` with `toml` in that file, run to its end.
pub fn run_with_config(cmd: &str, toml: &str) -> std::process::Output {
    let dir = TempDir::new("cfg");
    let cfg = dir.0.join("bad.toml");
    std::fs::write(&cfg, toml).expect("write config");
    Command::new(binary())
        .args([cmd, "--config"])
        .arg(&cfg)
        .output()
        .expect("run ringpost")
}

/// Polls `done` every 50 ms; fails the test naming `what` after `WAIT`.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind :0")
        .local_addr()
        .expect("local addr")
        .port()
}

pub struct Server {
    /// Extra arguments for `ringpost serve`.
    pub args: Vec<String>,
    pub child: Option<Child>,
    pub port: u16,
    pub dir: TempDir,
    pub config: PathBuf,
    pub stderr_path: PathBuf,
}

impl Server {
    /// Starts ringpost with `[[listen]]` on a free port, the queue in a temp dir, and
    /// `extra` TOML appended (any section but [[listen]]; a [queue] in it replaces ours).
    pub fn start(extra: &str) -> Server {
        let dir = TempDir::new("srv");
        let port = free_port();
        let config = dir.0.join("ringpost.toml");
        let queue = if extra.contains("[queue]") {
            String::new()
        } else {
            format!("[queue]\ndir = \"{}\"\n", dir.0.join("queue").display())
        };
        // Tests never reach outside loopback: without a [delivery] of their own, DNS goes
        // to the discard port, where lookups fail at once and mail stays queued.
        let delivery = if extra.contains("[delivery]") {
            ""
        } else {
            "[delivery]\ndns = [\"127.0.0.1:9\"]\n"
        };
        let text = format!("[[listen]]\naddr = \"127.0.0.1:{port}\"\n{queue}{delivery}{extra}\n");
        std::fs::write(&config, text).expect("write config");
        let stderr_path = dir.0.join("stderr.log");
        let mut s = Server {
            args: Vec::new(),
            child: None,
            port,
            dir,
            config,
            stderr_path,
        };
        s.restart();
        s
    }

    /// (Re)starts the process on the same config and queue, waiting for "ready".
    pub fn restart(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("log");
        let mut child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(&self.config)
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn ringpost");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("ready") {
                    let _ = tx.send(line);
                }
            }
        });
        if rx.recv_timeout(WAIT).is_err() {
            let _ = child.kill();
            panic!("ringpost did not become ready: {}", self.stderr());
        }
        self.child = Some(child);
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until the server's log says `needle` (info lines are flushed within a second).
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.stderr().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "the log never said {needle:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn queue_dir(&self) -> PathBuf {
        self.dir.0.join("queue")
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.port)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            wait_until_not_listening(self.port);
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ringpost did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Client { stream, reader }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// One whole reply (all lines of a multi-line reply), CRLFs included.
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read reply");
            assert!(n > 0, "connection closed; got so far: {all:?}");
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    /// Sends a command line and returns the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Asserts the next reply starts with `prefix`.
    pub fn expect(&mut self, prefix: &str) -> String {
        let r = self.reply();
        assert!(r.starts_with(prefix), "expected {prefix:?}, got {r:?}");
        r
    }

    pub fn greet(&mut self) {
        self.expect("220 ");
        let r = self.cmd("EHLO client.test");
        assert!(r.starts_with("250-"), "{r}");
    }

    /// True when the server closed the connection (EOF) within the wait.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0))
    }

    /// Sends one whole message with DATA; returns the final reply.
    pub fn send_message(&mut self, from: &str, to: &[&str], body: &[u8]) -> String {
        self.expect_cmd(&format!("MAIL FROM:<{from}>"), "250");
        for t in to {
            self.expect_cmd(&format!("RCPT TO:<{t}>"), "25");
        }
        self.expect_cmd("DATA", "354");
        self.send(&dot_stuff(body));
        self.send(b".\r\n");
        self.reply()
    }

    pub fn expect_cmd(&mut self, line: &str, prefix: &str) -> String {
        let r = self.cmd(line);
        assert!(
            r.starts_with(prefix),
            "{line}: expected {prefix:?}, got {r:?}"
        );
        r
    }
}

/// Dot-stuffs a CRLF body for DATA.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out
}

/// The queue id at the end of "250 2.0.0 Ok: queued as ID".
pub fn queued_id(reply: &str) -> String {
    assert!(
        reply.starts_with("250 2.0.0 Ok: queued as "),
        "not queued: {reply:?}"
    );
    reply.trim_end().rsplit(' ').next().expect("id").to_string()
}

/// A live message read back from a queue directory (offline, as after a restart).
pub struct Queued {
    pub id: String,
    pub sender: String,
    pub recipients: Vec<String>,
    /// The content as the client meant it (unstuffed).
    pub content: Vec<u8>,
    /// The content as stored: dot-stuffed wire form.
    pub wire: Vec<u8>,
}

pub fn read_queue(queue_dir: &Path) -> Vec<Queued> {
    use ringpost::queue::recovery;
    let dirs: Vec<PathBuf> = recovery::shard_dirs(queue_dir)
        .expect("shard dirs")
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let r = recovery::recover(&dirs, false).expect("recover");
    let mut out = Vec::new();
    for e in r.index.live() {
        let image = std::fs::read(&r.segments[e.home as usize]).expect("segment");
        let at = e.content_offset() as usize;
        let wire = image[at..at + e.message.content_len as usize].to_vec();
        out.push(Queued {
            id: e.message.id.to_string(),
            sender: e.message.envelope.sender.clone(),
            recipients: e
                .message
                .envelope
                .recipients
                .iter()
                .map(|r| r.address.clone())
                .collect(),
            content: ringpost::smtp::data::unstuff(&wire),
            wire,
        });
    }
    out
}

/// Strips our Received header (the first header field, with its folded lines).
pub fn without_received(content: &[u8]) -> &[u8] {
    assert!(
        content.starts_with(b"Received: "),
        "no Received header first"
    );
    let mut at = 0;
    loop {
        let lf = at
            + content[at..]
                .iter()
                .position(|&b| b == b'\n')
                .expect("header line end");
        at = lf + 1;
        if !matches!(content.get(at), Some(b' ' | b'\t')) {
            return &content[at..];
        }
    }
}

/// The loadgen binary from the same target directory, built on demand when this test run
/// did not build it (e.g. `cargo test -p ringpost`).
pub fn loadgen_bin() -> PathBuf {
    let dir = Path::new(binary())
        .parent()
        .expect("target dir")
        .to_path_buf();
    let bin = dir.join("loadgen");
    static BUILD: std::sync::Once = std::sync::Once::new();
    // Built (or found up to date) once per test process: a loadgen left over from an
    // older checkout would test the relay against the wrong peer.
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "loadgen"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().expect("cargo build -p loadgen").success(),
            "cannot build loadgen"
        );
    });
    bin
}

/// A loadgen daemon (sink or dns) on loopback, stopped on drop.
pub struct Daemon {
    pub child: Child,
}

impl Daemon {
    pub fn start(args: &[String]) -> Daemon {
        let mut child = Command::new(loadgen_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("loadgen");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("loadgen {args:?} did not start"));
        assert!(line.contains("listening"), "{line}");
        Daemon { child }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// ringpost between `loadgen dns` and `loadgen sink`, all on loopback:
/// the sink listens on 127.0.0.1 and 127.0.0.2 (two "hosts") at `sink_port`, which is
/// also the relay's delivery port, and records every message it accepts.
pub struct Relay {
    pub server: Server,
    pub dns: Option<Daemon>,
    pub sink: Daemon,
    sink_args: Vec<String>,
    pub sink_port: u16,
    pub dns_port: u16,
    pub dir: TempDir,
    zone: PathBuf,
}

/// Zone lines every relay test has: sink.test and sender.test deliver to the sink.
pub const BASE_ZONE: &str = "sink.test MX 10 mx.sink.test\nsender.test MX 10 mx.sink.test\nmx.sink.test A 127.0.0.1\nmx2.sink.test A 127.0.0.2\n";

impl Relay {
    /// `zone`: extra zone lines; `config`: extra ringpost TOML (not [delivery] or [queue]);
    /// `delivery`: extra [delivery] keys; `sink_args`: extra sink flags.
    pub fn start(zone: &str, config: &str, delivery: &str, sink_args: &[&str]) -> Relay {
        let dir = TempDir::new("relay");
        let sink_port = free_port();
        let dns_port = free_port();
        let zone_path = dir.0.join("zone");
        std::fs::write(&zone_path, format!("{BASE_ZONE}{zone}")).expect("zone");
        let mut args: Vec<String> = ["sink", "--stats"].iter().map(|s| s.to_string()).collect();
        args.push(dir.0.join("sink.json").display().to_string());
        args.extend([
            "--record".to_string(),
            dir.0.join("rec").display().to_string(),
        ]);
        for host in ["127.0.0.1", "127.0.0.2"] {
            args.extend(["--listen".to_string(), format!("{host}:{sink_port}")]);
        }
        args.extend(sink_args.iter().map(|s| s.to_string()));
        let sink = Daemon::start(&args);
        let sink_args = args;
        let dns = Some(Relay::start_dns(dns_port, &zone_path));
        let defaults = format!(
            "dns = [\"127.0.0.1:{dns_port}\"]\nport = {sink_port}\ndns_timeout = \"500ms\"\ndns_attempts = 1\nretry_initial = \"1s\"\nretry_max = \"2s\"\nidle_timeout = \"1s\"\n"
        );
        // The test's own [delivery] keys replace the defaults.
        let keep: String = defaults
            .lines()
            .filter(|l| {
                l.split('=').next().is_some_and(|k| {
                    !delivery.contains(&format!("{}=", k.trim()))
                        && !delivery.contains(&format!("{} =", k.trim()))
                })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let server = Server::start(&format!("{config}\n[delivery]\n{keep}{delivery}\n"));
        Relay {
            server,
            dns,
            sink,
            sink_args,
            sink_port,
            dns_port,
            dir,
            zone: zone_path,
        }
    }

    pub fn start_dns(port: u16, zone: &Path) -> Daemon {
        Daemon::start(&[
            "dns".to_string(),
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--zone".to_string(),
            zone.display().to_string(),
            "--ttl".to_string(),
            "1".to_string(),
        ])
    }

    pub fn restart_dns(&mut self) {
        self.dns = None;
        self.dns = Some(Relay::start_dns(self.dns_port, &self.zone));
    }

    /// Stops the sink (its connections close with it) and starts it again, as it was.
    /// The new sink counts from zero and records over the old one's files.
    pub fn restart_sink(&mut self) {
        let _ = self.sink.child.kill();
        let _ = self.sink.child.wait();
        let _ = std::fs::remove_file(self.dir.0.join("sink.json"));
        self.sink = Daemon::start(&self.sink_args);
    }

    pub fn sink_stats(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.0.join("sink.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// Waits until the sink's `field` reaches `n` (or fails the test after `WAIT`).
    pub fn wait_sink(&self, field: &str, n: u64) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.sink_stats();
            if s[field].as_u64().unwrap_or(0) >= n {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "sink {field} never reached {n}: {s}\nringpost: {}",
                self.server.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every message the sink recorded: (envelope JSON, content).
    pub fn recorded(&self) -> Vec<(serde_json::Value, Vec<u8>)> {
        let dir = self.dir.0.join("rec");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .into_iter()
            .filter_map(|p| {
                let env: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&p).ok()?).ok()?;
                let eml = std::fs::read(p.with_extension("eml")).ok()?;
                Some((env, eml))
            })
            .collect()
    }

    /// Waits until the sink recorded a message to `rcpt`; returns it.
    pub fn wait_for(&self, rcpt: &str) -> (serde_json::Value, Vec<u8>) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(m) = self.recorded().into_iter().find(|(env, _)| {
                env["rcpt_to"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|r| r == rcpt))
            }) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "nothing arrived for {rcpt}\nringpost: {}",
                self.server.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `loadgen send` at the relay; returns its JSON report.
    pub fn send(&self, args: &[&str]) -> serde_json::Value {
        let json = self.dir.0.join(format!("send-{}.json", free_port()));
        let target = format!("127.0.0.1:{}", self.server.port);
        let out = Command::new(loadgen_bin())
            .args(["send", "--target", &target, "--json"])
            .arg(&json)
            .args(args)
            .output()
            .expect("loadgen send");
        let text = std::fs::read_to_string(&json)
            .unwrap_or_else(|_| panic!("no report: {}", String::from_utf8_lossy(&out.stderr)));
        serde_json::from_str(&text).expect("report")
    }
}
