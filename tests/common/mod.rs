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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind :0")
        .local_addr()
        .expect("local addr")
        .port()
}

pub struct Server {
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
        let delivery = if extra.contains("[delivery]") { "" } else { "[delivery]\ndns = [\"127.0.0.1:9\"]\n" };
        let text = format!("[[listen]]\naddr = \"127.0.0.1:{port}\"\n{queue}{delivery}{extra}\n");
        std::fs::write(&config, text).expect("write config");
        let stderr_path = dir.0.join("stderr.log");
        let mut s = Server {
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
