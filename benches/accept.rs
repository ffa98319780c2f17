//! Accept rate end to end: the real release binary, N concurrent SMTP clients on loopback,
//! 1 KiB messages, fsync on (always). Reports msgs/s, per-message latency (MAIL to the
//! final 250) p50/p99, ringpost CPU per message, and the group commit's fsyncs.
//!
//!   cargo bench --bench accept                       # 1 and 50 connections
//!   cargo bench --bench accept -- 50 20000 1024      # connections, messages, size
//!
//! Each client pipelines MAIL, RCPT and DATA (RFC 2920) and waits for the 354, then sends
//! the content and waits for the 250: two round trips per message, as a real client.

use hdrhistogram::Histogram;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const READY_WAIT: Duration = Duration::from_secs(30);

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runs: Vec<(usize, usize, usize)> = match args.as_slice() {
        [c, m, s, ..] => vec![(parse(c), parse(m), parse(s))],
        [c, m] => vec![(parse(c), parse(m), 1024)],
        _ => vec![(1, 3_000, 1024), (50, 30_000, 1024)],
    };
    for (connections, messages, size) in runs {
        run(connections, messages, size);
    }
}

fn parse(s: &str) -> usize {
    s.parse().unwrap_or_else(|_| panic!("not a number: {s}"))
}

fn run(connections: usize, messages: usize, size: usize) {
    let dir = std::env::temp_dir().join(format!("ringpost-bench-accept-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let config = dir.join("ringpost.toml");
    std::fs::write(
        &config,
        format!(
            // Delivery is not measured here: DNS goes to the discard port on loopback, so
            // lookups fail at once, mail stays queued and nothing leaves the machine.
            "[[listen]]\naddr = \"127.0.0.1:{port}\"\n[queue]\ndir = \"{}\"\n[policy]\nrelay_domains = [\"sink.test\"]\n[server]\nmax_connections_per_ip = 10000\n[delivery]\ndns = [\"127.0.0.1:9\"]\n",
            dir.join("queue").display()
        ),
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringpost"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringpost");
    // Drain stderr all along: a full pipe would stop ringpost's logging, and ringpost.
    let mut stderr = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        err
    });
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let started = Instant::now();
    let mut line = String::new();
    while !line.contains("ready") {
        line.clear();
        if out.read_line(&mut line).expect("read stdout") == 0 || started.elapsed() > READY_WAIT {
            panic!("ringpost did not start");
        }
    }
    let pid = child.id();
    let body = content(size);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu0 = cpu_ticks(pid);
    let t0 = Instant::now();
    let clients: Vec<_> = (0..connections)
        .map(|_| {
            let next = Arc::clone(&next);
            let body = body.clone();
            std::thread::spawn(move || client(port, &next, messages, &body))
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for c in clients {
        hist.add(c.join().expect("client")).expect("merge");
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_ticks(pid) - cpu0;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    let err = err_reader.join().expect("stderr reader");
    let commits: u64 = err
        .lines()
        .filter_map(|l| {
            l.split(" commits,")
                .next()?
                .rsplit(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let n = hist.len() as f64;
    println!(
        "accept: {connections:>3} connections, {size} B: {:>8.0} msgs/s  p50 {:>6} us  p99 {:>6} us  cpu {:>5.1} us/msg  {:.0} fsyncs/s ({:.1} msgs per fsync)",
        n / elapsed,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        cpu as f64 / ticks_per_sec * 1e6 / n,
        commits as f64 / elapsed,
        n / commits.max(1) as f64,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn content(size: usize) -> Vec<u8> {
    let mut b = b"From: bench@b.test\r\nTo: r@sink.test\r\nSubject: accept bench\r\n\r\n".to_vec();
    while b.len() + 78 <= size {
        b.extend_from_slice(&[b'x'; 76]);
        b.extend_from_slice(b"\r\n");
    }
    b
}

/// Sends messages until `messages` were claimed in total; returns latencies in us.
fn client(port: u16, next: &AtomicUsize, messages: usize, body: &[u8]) -> Histogram<u64> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    expect(&mut r, "220");
    s.write_all(b"EHLO bench.test\r\n").expect("ehlo");
    expect(&mut r, "250");
    let mut wire = body.to_vec();
    wire.extend_from_slice(b".\r\n");
    while next.fetch_add(1, Ordering::Relaxed) < messages {
        let t = Instant::now();
        s.write_all(b"MAIL FROM:<bench@b.test>\r\nRCPT TO:<r@sink.test>\r\nDATA\r\n")
            .expect("send");
        expect(&mut r, "250");
        expect(&mut r, "250");
        expect(&mut r, "354");
        s.write_all(&wire).expect("send");
        expect(&mut r, "250");
        hist.record(t.elapsed().as_micros() as u64).expect("record");
    }
    let _ = s.write_all(b"QUIT\r\n");
    hist
}

/// Reads one (possibly multi-line) reply and checks its code.
fn expect(r: &mut BufReader<TcpStream>, code: &str) {
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("reply");
        assert!(line.starts_with(code), "expected {code}, got {line:?}");
        if line.as_bytes().get(3) != Some(&b'-') {
            return;
        }
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" of the command name: utime is 14th, stime 15th overall.
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}
