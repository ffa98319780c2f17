//! loadgen's own tests: the real binary, send -> sink and the DNS server, on loopback.

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn loadgen() -> &'static str {
    env!("CARGO_BIN_EXE_loadgen")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "loadgen-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A background loadgen server (sink or dns), stopped with SIGTERM on drop.
struct Daemon {
    child: Option<Child>,
    port: u16,
    output: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Daemon {
    fn start(args: &[&str], port: u16) -> Daemon {
        let mut child = Command::new(loadgen())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let output = std::thread::spawn(move || {
            let mut all = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                all.push(line);
            }
            all
        });
        let line = rx.recv_timeout(WAIT).expect("daemon did not start");
        assert!(line.contains("listening"), "{line}");
        Daemon {
            child: Some(child),
            port,
            output: Some(output),
        }
    }

    fn sink(extra: &[&str], dir: &Path) -> Daemon {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let stats = dir.join("stats.json");
        let mut args = vec![
            "sink",
            "--listen",
            &listen,
            "--stats",
            stats.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Daemon::start(&args, port)
    }

    /// Stops the daemon and returns everything it printed.
    fn stop(mut self) -> String {
        let (Some(mut child), Some(output)) = (self.child.take(), self.output.take()) else {
            return String::new();
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + WAIT;
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "daemon did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        output.join().unwrap().join("\n")
    }
}

/// A failed test must not leave its daemon running.
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn send(args: &[&str]) -> serde_json::Value {
    let dir = Dir::new("send");
    let json = dir.0.join("report.json");
    let out = Command::new(loadgen())
        .arg("send")
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success() || !args.is_empty(),
        "send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&json).expect("report written")).unwrap()
}

/// The sink's totals once they stop changing (the last reply may race the counters).
fn sink_stats(dir: &Path) -> serde_json::Value {
    let path = dir.join("stats.json");
    let mut last = String::new();
    let deadline = Instant::now() + WAIT;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        if !now.is_empty() && now == last {
            return serde_json::from_str(&now).unwrap();
        }
        assert!(Instant::now() < deadline, "stats never settled");
        last = now;
    }
}

#[test]
fn send_to_sink_counts_exactly() {
    let dir = Dir::new("exact");
    let sink = Daemon::sink(&["--shards", "2"], &dir.0);
    let target = format!("127.0.0.1:{}", sink.port);
    let r = send(&[
        "--target",
        &target,
        "--connections",
        "8",
        "--shards",
        "2",
        "--messages",
        "600",
        "--rcpts-per-message",
        "3",
        "--domain",
        "a.test:3",
        "--domain",
        "b.test:1",
        "--size",
        "1k:50,4k:50",
        "--seed",
        "42",
    ]);
    assert_eq!(r["messages_attempted"], 600);
    assert_eq!(r["messages_accepted"], 600);
    assert_eq!(r["messages_failed"], 0);
    assert_eq!(r["recipients_accepted"], 1800);
    assert_eq!(r["message"]["count"], 600);
    // Replies add up: per connection 220 + 250 (EHLO) + 221; per message 250 x (1 + 3 + 1) and 354.
    assert_eq!(r["replies"]["220"], 8);
    assert_eq!(r["replies"]["221"], 8);
    assert_eq!(r["replies"]["354"], 600);
    assert_eq!(r["replies"]["250"], 8 + 600 * 5);
    let s = sink_stats(&dir.0);
    assert_eq!(s["messages"], 600);
    assert_eq!(s["recipients"], 1800);
    assert_eq!(s["delivered_messages"], 600);
    assert_eq!(s["delivered_recipients"], 1800);
    assert_eq!(s["duplicated"], 0);
    assert_eq!(s["corrupted"], 0);
    assert_eq!(s["connections"], 8);
    assert!(s["max_messages_per_connection"].as_u64().unwrap() >= 600 / 8);
    let a = s["per_domain"]["a.test"].as_u64().unwrap();
    let b = s["per_domain"]["b.test"].as_u64().unwrap();
    assert_eq!(a + b, 1800);
    assert!(a > 2 * b, "weights 3:1 gave {a}:{b}");
    assert_eq!(
        s["bytes"].as_u64().unwrap() + 600 * 3,
        r["bytes_sent"].as_u64().unwrap(),
        "sent = received + the final .CRLF"
    );
    let out = sink.stop();
    assert!(out.contains("600 messages"), "{out}");
}

#[test]
fn same_seed_same_workload() {
    let dir = Dir::new("seed");
    let sink = Daemon::sink(&[], &dir.0);
    let target = format!("127.0.0.1:{}", sink.port);
    let args = [
        "--target",
        &target,
        "--messages",
        "50",
        "--size",
        "1k:1,8k:1",
        "--seed",
        "7",
    ];
    let a = send(&args);
    let b = send(&args);
    assert_eq!(a["bytes_sent"], b["bytes_sent"]);
    assert_eq!(a["seed"], 7);
    // A second run with the same seed sends the same ids: the sink counts them as duplicates.
    assert_eq!(sink_stats(&dir.0)["duplicated"], 50);
}

fn smtp(port: u16, script: &[&[u8]]) -> Vec<String> {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut replies = Vec::new();
    let read = |r: &mut BufReader<TcpStream>| loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        if l.as_bytes().get(3) != Some(&b'-') {
            return l;
        }
    };
    replies.push(read(&mut r));
    for step in script {
        w.write_all(step).unwrap();
        replies.push(read(&mut r));
    }
    replies
}

#[test]
fn integrity_failures_are_detected() {
    let dir = Dir::new("integrity");
    let sink = Daemon::sink(&[], &dir.0);
    let body = b"line one\r\nline two\r\n";
    let sum = crc32c::crc32c(body);
    let good = format!(
        "X-Loadgen-Id: t-1\r\nX-Loadgen-Checksum: {sum:08x}\r\n\r\nline one\r\nline two\r\n.\r\n"
    );
    let bad = format!(
        "X-Loadgen-Id: t-2\r\nX-Loadgen-Checksum: {sum:08x}\r\n\r\nline one\r\nline 2wo\r\n.\r\n"
    );
    let foreign = "Subject: not ours\r\n\r\nhello\r\n.\r\n".to_string();
    let mut script: Vec<Vec<u8>> = vec![b"EHLO t.test\r\n".to_vec()];
    for m in [&good, &good, &bad, &foreign] {
        script.push(b"MAIL FROM:<a@b.test>\r\n".to_vec());
        script.push(b"RCPT TO:<c@d.test>\r\n".to_vec());
        script.push(b"DATA\r\n".to_vec());
        script.push(m.as_bytes().to_vec());
    }
    let steps: Vec<&[u8]> = script.iter().map(|s| s.as_slice()).collect();
    let replies = smtp(sink.port, &steps);
    assert!(
        replies
            .iter()
            .filter(|r| r.starts_with("250 2.0.0 Ok: queued"))
            .count()
            == 4,
        "{replies:?}"
    );
    let s = sink_stats(&dir.0);
    assert_eq!(s["delivered_messages"], 1);
    assert_eq!(s["duplicated"], 1);
    assert_eq!(s["corrupted"], 1);
    assert_eq!(s["foreign"], 1);
}

#[test]
fn sink_misbehaves_on_request() {
    let dir = Dir::new("magic");
    let rec = dir.0.join("rec");
    let sink = Daemon::sink(
        &[
            "--record",
            rec.to_str().unwrap(),
            "--domain-reject",
            "bad.test=1.0",
        ],
        &dir.0,
    );
    let r = smtp(
        sink.port,
        &[
            b"EHLO t.test\r\n",
            b"MAIL FROM:<a@b.test>\r\n",
            b"RCPT TO:<reject@x.test>\r\n",
            b"RCPT TO:<defer@x.test>\r\n",
            b"RCPT TO:<tempfail-2@x.test>\r\n",
            b"RCPT TO:<tempfail-2@x.test>\r\n",
            b"RCPT TO:<tempfail-2@x.test>\r\n",
            b"RCPT TO:<anyone@bad.test>\r\n",
            b"DATA\r\n",
            b"Subject: kept\r\n\r\nbody\r\n.\r\n",
            b"MAIL FROM:<a@b.test>\r\n",
            b"RCPT TO:<reject-data@x.test>\r\n",
            b"DATA\r\n",
            b"Subject: refused\r\n\r\nbody\r\n.\r\n",
        ],
    );
    let codes: Vec<&str> = r.iter().map(|l| &l[..3]).collect();
    assert_eq!(
        codes,
        [
            "220", "250", "250", "550", "451", "451", "451", "250", "550", "354", "250", "250",
            "250", "354", "554"
        ],
        "{r:?}"
    );
    let s = sink_stats(&dir.0);
    assert_eq!(s["rcpt_rejected"], 2);
    assert_eq!(s["rcpt_deferred"], 3);
    assert_eq!(s["data_rejected"], 1);
    let env: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rec.join("00000000.json")).unwrap()).unwrap();
    assert_eq!(env["mail_from"], "a@b.test");
    assert_eq!(env["rcpt_to"], serde_json::json!(["tempfail-2@x.test"]));
    assert_eq!(
        std::fs::read(rec.join("00000000.eml")).unwrap(),
        b"Subject: kept\r\n\r\nbody\r\n"
    );
}

#[test]
fn lmtp_replies_per_recipient() {
    let dir = Dir::new("lmtp");
    let sink = Daemon::sink(&["--lmtp"], &dir.0);
    let s = TcpStream::connect(("127.0.0.1", sink.port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    w.write_all(b"LHLO t.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<ok@x.test>\r\nRCPT TO:<reject-data@x.test>\r\nDATA\r\n").unwrap();
    let mut lines = Vec::new();
    while lines.last().is_none_or(|l: &String| !l.starts_with("354")) {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        lines.push(l);
    }
    w.write_all(b"Subject: x\r\n\r\ny\r\n.\r\n").unwrap();
    let mut per_rcpt = Vec::new();
    for _ in 0..2 {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        per_rcpt.push(l);
    }
    assert!(
        per_rcpt[0].starts_with("250 2.1.5 <ok@x.test>"),
        "{per_rcpt:?}"
    );
    assert!(per_rcpt[1].starts_with("550"), "{per_rcpt:?}");
}

#[test]
fn starttls_open_loop_and_one_message_per_connection() {
    let dir = Dir::new("tls");
    let sink = Daemon::sink(&[], &dir.0);
    let target = format!("127.0.0.1:{}", sink.port);
    let r = send(&[
        "--target",
        &target,
        "--starttls",
        "--messages",
        "40",
        "--connections",
        "4",
        "--seed",
        "1",
    ]);
    assert_eq!(r["messages_accepted"], 40);
    let r = send(&[
        "--target",
        &target,
        "--rate",
        "200",
        "--messages",
        "100",
        "--connections",
        "4",
        "--seed",
        "2",
    ]);
    assert_eq!(r["messages_accepted"], 100);
    assert!(r["mode"].as_str().unwrap().contains("open loop"));
    let r = send(&[
        "--target",
        &target,
        "--one-message-per-connection",
        "--messages",
        "20",
        "--pipelining",
        "off",
        "--seed",
        "3",
    ]);
    assert_eq!(r["messages_accepted"], 20);
    assert_eq!(r["session"]["count"], 20);
    assert_eq!(r["connect"]["count"], 20);
    let s = sink_stats(&dir.0);
    assert_eq!(s["tls_sessions"], 4);
    assert_eq!(s["delivered_messages"], 160);
    assert_eq!(s["connections"], 4 + 4 + 20);
}

#[test]
fn refuses_remote_targets() {
    let out = Command::new(loadgen())
        .args(["send", "--target", "192.0.2.1:25", "--messages", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-remote"));
}

fn dns_query(port: u16, name: &str, t: RecordType, tcp: bool) -> Message {
    let mut q = Message::query();
    q.metadata.id = 4242;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(
        Name::from_ascii(format!("{name}.")).unwrap(),
        t,
    ));
    let bytes = q.to_vec().unwrap();
    let reply = if tcp {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        s.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).unwrap();
        buf
    } else {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.send_to(&bytes, ("127.0.0.1", port)).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.recv(&mut buf).unwrap();
        buf.truncate(n);
        buf
    };
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(m.metadata.id, 4242);
    m
}

#[test]
fn dns_answers_every_case() {
    let dir = Dir::new("dns");
    let zone = dir.0.join("zone");
    std::fs::write(&zone, "example.test MX 10 mx1.example.test\nexample.test MX 20 mx2.example.test\nalias.test CNAME example.test\nnullmx.test MX 0 .\nbig.test TRUNCATE\nbig.test MX 5 mx1.example.test\nslow.test DELAY 300ms\nslow.test A 127.0.0.3\nsilent.test DROP\n").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dns = Daemon::start(
        &[
            "dns",
            "--listen",
            &listen,
            "--zone",
            zone.to_str().unwrap(),
            "--a",
            "mx1.example.test=127.0.0.1",
            "--a",
            "v6.test=::1",
            "--mx",
            "flag.test=mx1.example.test:7",
            "--record",
            "gone.test NXDOMAIN",
            "--record",
            "broken.test SERVFAIL",
        ],
        port,
    );
    for tcp in [false, true] {
        let m = dns_query(dns.port, "example.test", RecordType::MX, tcp);
        let mut prefs: Vec<u16> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some(mx.preference),
                _ => None,
            })
            .collect();
        prefs.sort_unstable();
        assert_eq!(prefs, vec![10, 20]);
        assert!(m.metadata.authoritative);
        let m = dns_query(dns.port, "mx1.example.test", RecordType::A, tcp);
        assert!(matches!(&m.answers[0].data, RData::A(a) if a.0.to_string() == "127.0.0.1"));
        let m = dns_query(dns.port, "v6.test", RecordType::AAAA, tcp);
        assert!(matches!(&m.answers[0].data, RData::AAAA(a) if a.0.to_string() == "::1"));
        let m = dns_query(dns.port, "flag.test", RecordType::MX, tcp);
        assert!(matches!(&m.answers[0].data, RData::MX(mx) if mx.preference == 7));
        let m = dns_query(dns.port, "alias.test", RecordType::MX, tcp);
        assert!(matches!(&m.answers[0].data, RData::CNAME(_)) && m.answers.len() == 3);
        let m = dns_query(dns.port, "nullmx.test", RecordType::MX, tcp);
        assert!(
            matches!(&m.answers[0].data, RData::MX(mx) if mx.exchange.is_root() && mx.preference == 0)
        );
        assert_eq!(
            dns_query(dns.port, "gone.test", RecordType::MX, tcp)
                .metadata
                .response_code,
            ResponseCode::NXDomain
        );
        assert_eq!(
            dns_query(dns.port, "broken.test", RecordType::MX, tcp)
                .metadata
                .response_code,
            ResponseCode::ServFail
        );
        let m = dns_query(dns.port, "mx1.example.test", RecordType::MX, tcp);
        assert_eq!(
            (m.metadata.response_code, m.answers.len()),
            (ResponseCode::NoError, 0),
            "NODATA"
        );
    }
    let udp = dns_query(dns.port, "big.test", RecordType::MX, false);
    assert!(udp.metadata.truncation && udp.answers.is_empty());
    let tcp = dns_query(dns.port, "big.test", RecordType::MX, true);
    assert!(!tcp.metadata.truncation && tcp.answers.len() == 1);
    let t = Instant::now();
    dns_query(dns.port, "slow.test", RecordType::A, false);
    assert!(t.elapsed() >= Duration::from_millis(300));
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut q = Message::query();
    q.add_query(Query::query(
        Name::from_ascii("silent.test.").unwrap(),
        RecordType::MX,
    ));
    s.send_to(&q.to_vec().unwrap(), ("127.0.0.1", dns.port))
        .unwrap();
    assert!(s.recv(&mut [0u8; 512]).is_err(), "DROP answered");
    let out = dns.stop();
    assert!(out.contains("udp and"), "{out}");
}
