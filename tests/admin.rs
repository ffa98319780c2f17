//! Operations against a running server: the admin endpoint (metrics, queue summary,
//! flush) and the queue commands.

mod common;

use common::*;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

fn http(port: u16, request: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (code, body)
}

/// The sum over shards of one Prometheus metric.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Polls `/metrics` (token "t0ken") until `done` holds for its text, which it returns.
fn metrics_once(admin: u16, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, text) = http(
            admin,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\n\r\n",
        );
        assert_eq!(code, 200);
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A relay for sink.test with its admin endpoint (token "t0ken") on the returned port;
/// `extra`: more ringpost TOML sections, `delivery`: [delivery] keys.
fn relay_with_admin(extra: &str, delivery: &str) -> (Relay, u16) {
    let admin = free_port();
    let config = format!(
        "[server]\nhostname = \"relay.test\"\n[policy]\nrelay_domains = [\"sink.test\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"t0ken\"\n{extra}"
    );
    (Relay::start("", &config, delivery, &[]), admin)
}

/// Sends `n` messages over `connections` lock-step connections (no pipelining) to
/// sink.test; loadgen send's report.
fn send_lock_step(r: &Relay, n: u64, connections: u32, rcpts: u32, seed: u32) -> serde_json::Value {
    let (n, connections, rcpts, seed) = (
        n.to_string(),
        connections.to_string(),
        rcpts.to_string(),
        seed.to_string(),
    );
    r.send(&[
        "--messages",
        &n,
        "--connections",
        &connections,
        "--rcpts-per-message",
        &rcpts,
        "--pipelining",
        "off",
        "--domain",
        "sink.test",
        "--seed",
        &seed,
    ])
}

#[test]
fn metrics_summary_and_flush() {
    let (r, admin) = relay_with_admin("", "retry_initial = \"1h\"\nretry_max = \"1h\"\n");
    let report = r.send(&[
        "--messages",
        "30",
        "--connections",
        "3",
        "--domain",
        "sink.test",
        "--seed",
        "9",
    ]);
    assert_eq!(report["messages_accepted"], 30);
    let mut c = r.server.connect();
    c.greet();
    queued_id(&c.send_message(
        "s@sender.test",
        &["tempfail-1@sink.test"],
        b"Subject: deferred once\r\n\r\nx\r\n",
    ));
    c.expect_cmd("RCPT TO:<x@sink.test>", "503");
    r.wait_sink("delivered_messages", 30);
    r.wait_sink("rcpt_deferred", 1);
    let get = |path: &str| {
        http(
            admin,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\n\r\n"),
        )
    };
    // Snapshots are published about once a second.
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let (code, text) = get("/metrics");
        assert_eq!(code, 200);
        if metric(&text, "ringpost_accepted_messages_total") == 31
            && metric(&text, "ringpost_queue_messages") == 1
        {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(metric(&text, "ringpost_delivered_recipients_total"), 30);
    assert!(metric(&text, "ringpost_deferred_recipients_total") >= 1);
    assert!(metric(&text, "ringpost_log_commits_total") >= 1);
    assert!(
        metric(&text, "ringpost_refused_commands_total") >= 1,
        "the 503 above is counted"
    );
    assert!(
        text.contains("ringpost_commit_batch_records{quantile=\"0.5\"}"),
        "{text}"
    );
    for q in ["fsync_seconds", "store_seconds", "delivery_delay_seconds"] {
        assert!(
            text.contains(&format!("ringpost_{q}{{quantile=\"0.99\"}}")),
            "{q}: {text}"
        );
    }
    assert_eq!(
        http(admin, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").0,
        401,
        "the token is required"
    );
    let (code, summary) = get("/queue/summary");
    assert_eq!(code, 200);
    let s: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(s["sink.test"]["messages"], 1, "{summary}");
    // The CLI: summary from the queue on disk, flush through the admin endpoint.
    let out = Command::new(binary())
        .args(["queue", "summary", "--config"])
        .arg(&r.server.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("sink.test") && l.split_whitespace().nth(1) == Some("1")),
        "{text}"
    );
    let out = Command::new(binary())
        .args(["queue", "flush", "sink.test", "--config"])
        .arg(&r.server.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    r.wait_for("tempfail-1@sink.test");
}

/// Loop pacing held to a long period (and on whether or not the CPUs are contended):
/// every message still arrives, and the pauses show in the metrics.
#[test]
fn a_paced_loop_delivers_everything_and_counts_its_pauses() {
    let (r, admin) = relay_with_admin(
        "[tuning]\nshards = 1\nloop_period = \"1ms\"\nloop_pace_cpu_pressure = 0\n",
        "",
    );
    // Four lock-step connections (no pipelining): small, frequent rounds of the loop.
    let report = send_lock_step(&r, 600, 4, 3, 5);
    assert_eq!(report["messages_accepted"], 600, "{report}");
    r.wait_sink("delivered_messages", 600);
    let text = metrics_once(admin, |t| {
        metric(t, "ringpost_delivered_recipients_total") == 1800
    });
    for name in [
        "ringpost_loop_pace_trials_total",
        "ringpost_loop_paused_rounds_total",
        "ringpost_loop_paused_microseconds_total",
    ] {
        assert!(metric(&text, name) >= 1, "{name}\n{text}");
    }
    let s = r.sink_stats();
    assert_eq!(s["duplicated"], 0, "{s}");
    assert_eq!(s["corrupted"], 0, "{s}");
}

/// With `outcome_delay`, delivery outcomes ride with the next message's commit: one lock-step
/// connection makes one commit per message, and the outcomes add none but the last one's.
#[test]
fn outcomes_ride_with_the_next_messages_commit() {
    let (r, admin) = relay_with_admin(
        "[queue]\noutcome_delay = \"300ms\"\n[tuning]\nshards = 1\n",
        "",
    );
    const MESSAGES: u64 = 40;
    let report = send_lock_step(&r, MESSAGES, 1, 1, 9);
    assert_eq!(report["messages_accepted"], MESSAGES, "{report}");
    r.wait_sink("delivered_messages", MESSAGES);
    // Every message and every outcome on disk: the queue is empty.
    let text = metrics_once(admin, |t| {
        metric(t, "ringpost_log_records_total") == 2 * MESSAGES
    });
    assert_eq!(metric(&text, "ringpost_queue_messages"), 0, "{text}");
    let commits = metric(&text, "ringpost_log_commits_total");
    assert!(commits <= MESSAGES + 2, "{commits} commits\n{text}");
    let s = r.sink_stats();
    assert_eq!(s["duplicated"], 0, "{s}");
    assert_eq!(s["corrupted"], 0, "{s}");
}

fn queue_cmd(r: &Relay, args: &[&str]) -> String {
    let out = Command::new(binary())
        .arg("queue")
        .args(args)
        .arg("--config")
        .arg(&r.server.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "queue {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn hold_release_delete_bounce() {
    let admin = free_port();
    let config = format!("[server]\nhostname = \"relay.test\"\n[policy]\nrelay_domains = [\"sink.test\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n");
    let mut r = Relay::start(
        "",
        &config,
        "retry_initial = \"1h\"\nretry_max = \"1h\"\n",
        &[],
    );
    let mut c = r.server.connect();
    c.greet();
    // Three messages that stay deferred (the sink says 451 the first time, and the retry
    // is an hour away).
    let held = queued_id(&c.send_message(
        "s@sender.test",
        &["tempfail-1@sink.test"],
        b"Subject: hold me\r\n\r\nx\r\n",
    ));
    let deleted = queued_id(&c.send_message(
        "s@sender.test",
        &["tempfail-2@sink.test"],
        b"Subject: delete me\r\n\r\nx\r\n",
    ));
    let bounced = queued_id(&c.send_message(
        "bounced@sender.test",
        &["tempfail-3@sink.test"],
        b"Subject: bounce me\r\n\r\nx\r\n",
    ));
    r.wait_sink("rcpt_deferred", 3);
    queue_cmd(&r, &["hold", &held]);
    wait_until("held", || {
        queue_cmd(&r, &["list"])
            .lines()
            .any(|l| l.starts_with(&held) && l.contains("held"))
    });
    // The hold is a log record: it survives a restart, and a held message is not delivered.
    r.server.kill9();
    r.server.restart();
    assert!(queue_cmd(&r, &["show", &held]).contains("state: held"));
    let held_only = queue_cmd(&r, &["list", "--state", "held"]);
    assert!(
        held_only.contains(&held) && !held_only.contains(&deleted),
        "{held_only}"
    );
    let json = queue_cmd(&r, &["list", "--json", "--domain", "sink.test"]);
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3, "{json}");
    assert!(rows
        .iter()
        .any(|v| v["id"] == held.as_str() && v["state"] == "held"));
    assert!(queue_cmd(&r, &["show", &deleted]).contains("deferred, next attempt"));
    let shown: serde_json::Value =
        serde_json::from_str(&queue_cmd(&r, &["show", &deleted, "--json"])).unwrap();
    assert_eq!(shown["recipients"][0]["state"], "deferred");
    assert!(shown["recipients"][0]["next_attempt"].as_u64().unwrap() > 0);
    queue_cmd(&r, &["delete", &deleted]);
    wait_until("deleted", || !queue_cmd(&r, &["list"]).contains(&deleted));
    queue_cmd(&r, &["bounce", &bounced]);
    let (env, dsn) = r.wait_for("bounced@sender.test");
    assert_eq!(env["mail_from"], "");
    assert!(String::from_utf8_lossy(&dsn).contains("returned to the sender by the administrator"));
    queue_cmd(&r, &["release", &held]);
    r.wait_for("tempfail-1@sink.test");
    wait_until("queue empty", || {
        read_queue(&r.server.queue_dir()).is_empty()
    });
    // Deleted without a bounce: the only DSN was for the bounced message.
    let dsns = r
        .recorded()
        .into_iter()
        .filter(|(env, _)| env["mail_from"] == "")
        .count();
    assert_eq!(dsns, 1);
}

#[test]
fn sighup_reloads_policy_for_new_sessions() {
    let mut server = Server::start(
        "[policy]\nrelay_networks = []\nrelay_domains = [\"a.test\"]\n[tuning]\nshards = 2\n",
    );
    let mut c = server.connect();
    c.greet();
    c.expect_cmd("MAIL FROM:<s@x.test>", "250");
    c.expect_cmd("RCPT TO:<u@b.test>", "554 5.7.1");
    let cfg = std::fs::read_to_string(&server.config).unwrap();
    std::fs::write(
        &server.config,
        cfg.replace("[\"a.test\"]", "[\"b.test\"]")
            .replace("shards = 2", "shards = 1"),
    )
    .unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.child.as_ref().unwrap().id() as i32, libc::SIGHUP) };
    wait_until("both shards reloaded", || {
        server
            .stderr()
            .matches("policy reloaded (relay domains")
            .count()
            == 2
    });
    assert!(
        server
            .stderr()
            .contains("[tuning] changed; that takes effect after a restart"),
        "{}",
        server.stderr()
    );
    let mut c = server.connect();
    c.greet();
    c.expect_cmd("MAIL FROM:<s@x.test>", "250");
    c.expect_cmd("RCPT TO:<u@b.test>", "250");
    c.expect_cmd("RCPT TO:<u@a.test>", "554 5.7.1");
    assert!(server.terminate().success());
}

#[test]
fn json_log_lines() {
    let mut server = Server::start("");
    server.kill9();
    server.args = vec!["--log-format".into(), "json".into()];
    server.restart();
    let mut c = server.connect();
    c.greet();
    let id =
        queued_id(&c.send_message("a@b.test", &["x@relay.test"], b"Subject: json\r\n\r\nx\r\n"));
    drop(c);
    let status = server.terminate();
    assert!(status.success());
    let line = server
        .stderr()
        .lines()
        .find(|l| l.contains(&format!("{id}: accepted")))
        .map(str::to_string)
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("{e}: {line:?}\n{}", server.stderr()));
    assert_eq!(v["level"], "info");
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("from=<a@b.test> nrcpt=1"),
        "{v}"
    );
    assert!(v["ts"].as_f64().unwrap() > 1e9);
}

#[test]
fn sd_notify_readiness() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("notify");
    let sock_path = dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let port = free_port();
    let cfg = dir.0.join("c.toml");
    std::fs::write(&cfg, format!("[[listen]]\naddr = \"127.0.0.1:{port}\"\n[queue]\ndir = \"{}\"\n[delivery]\ndns = [\"127.0.0.1:9\"]\n", dir.0.join("q").display())).unwrap();
    let mut child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("READY=1"));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().unwrap().success());
}
