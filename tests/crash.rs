//! Crash safety: concurrent clients, SIGKILL mid-stream, restart. Every message that got
//! a 250 must be in the recovered queue, byte for byte.

mod common;

use common::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENTS: usize = 8;
/// Kill once this many messages were acknowledged (or when the time bound is hit).
const ACKED_BEFORE_KILL: usize = 400;
const MESSAGES_PER_CLIENT_MAX: usize = 5_000;
const RUN_TIME_MAX: Duration = Duration::from_secs(20);

/// A body that differs per message in content and size, so mixed-up or torn records show.
fn body(client: usize, n: usize) -> Vec<u8> {
    let mut b = format!("Subject: crash {client}/{n}\r\nX-Seq: {n}\r\n\r\n").into_bytes();
    let lines = 1 + (client * 7 + n * 13) % 40;
    for l in 0..lines {
        b.extend_from_slice(
            format!("{client:02}-{n:05}-{l:03} {}\r\n", ".".repeat((n + l) % 50)).as_bytes(),
        );
    }
    b
}

#[test]
fn sigkill_loses_nothing_acknowledged() {
    let mut server = Server::start("[tuning]\nshards = 2\n");
    let port = server.port;
    let acked: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (acked, count, stop) = (Arc::clone(&acked), Arc::clone(&count), Arc::clone(&stop));
            std::thread::spawn(move || {
                // Each message goes over its own step-by-step exchange; any I/O error after
                // the kill ends the client (panics are caught by the closure boundary).
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut c = Client::connect(port);
                    c.greet();
                    for n in 0..MESSAGES_PER_CLIENT_MAX {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let b = body(client, n);
                        let r = c.send_message(
                            &format!("c{client}@b.test"),
                            &[&format!("r{n}@relay.test")],
                            &b,
                        );
                        let id = queued_id(&r);
                        acked.lock().unwrap().insert(id, b);
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                }));
                drop(run);
            })
        })
        .collect();
    let deadline = Instant::now() + RUN_TIME_MAX;
    while count.load(Ordering::SeqCst) < ACKED_BEFORE_KILL && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    server.kill9();
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= CLIENTS,
        "too few messages acknowledged before the kill: {}",
        acked.len()
    );
    server.restart();
    let queued: HashMap<String, Vec<u8>> = read_queue(&server.queue_dir())
        .into_iter()
        .map(|m| (m.id, without_received(&m.content).to_vec()))
        .collect();
    let mut missing = 0;
    for (id, body) in &acked {
        match queued.get(id) {
            None => missing += 1,
            Some(stored) => assert_eq!(stored, body, "message {id} differs after recovery"),
        }
    }
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged messages lost",
        acked.len()
    );
    eprintln!(
        "crash test: {} acknowledged before SIGKILL, all recovered; {} in the queue (the rest were mid-flight, never acknowledged)",
        acked.len(),
        queued.len()
    );
}

/// The last segment's tail torn (cut mid-record, then garbage): the server still starts,
/// says where the tail was torn, and keeps every record before it.
#[test]
fn torn_tail_is_reported_and_the_rest_recovered() {
    let mut server = Server::start("[tuning]\nshards = 1\n");
    let mut c = server.connect();
    c.greet();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(queued_id(&c.send_message(
            "a@b.test",
            &["x@relay.test"],
            format!("\r\nmessage {i}\r\n").as_bytes(),
        )));
    }
    drop(c);
    server.kill9();
    let shard = server.queue_dir().join("shard-0");
    let (_, last) = ringpost::queue::recovery::segments_in(&shard)
        .unwrap()
        .pop()
        .unwrap();
    let mut image = std::fs::read(&last).unwrap();
    // Find where the last record starts.
    let mut last_commit = 0;
    let mut at = 0;
    while let Ok((_, n)) = ringpost::queue::record::decode(&image[at..]) {
        last_commit = at;
        at += n;
    }
    image.truncate(last_commit + 40);
    image.extend_from_slice(b"\xde\xad\xbe\xef torn");
    std::fs::write(&last, &image).unwrap();
    server.restart();
    let err = server.stderr();
    assert!(
        err.contains(&format!("offset {last_commit}")) && err.contains("not acknowledged"),
        "{err}"
    );
    let mut got: Vec<String> = read_queue(&server.queue_dir())
        .into_iter()
        .map(|m| m.id)
        .collect();
    got.sort();
    assert_eq!(got, ids[..4].to_vec());
}

/// Unmounts the size-limited tmpfs when the test ends, however it ends.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A full queue disk answers 452 4.3.1 (never 250), the session stays usable, accepting
/// resumes when space returns, and every message acknowledged is intact. Needs root for
/// the size-limited tmpfs.
#[test]
fn full_disk_answers_452_and_loses_nothing() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("full_disk_answers_452_and_loses_nothing: skipped, needs root to mount a tmpfs");
        return;
    }
    let dir = TempDir::new("full");
    let mnt = dir.0.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(ok.success(), "mount tmpfs");
    let _mount = Mount(mnt.clone());
    // 4 MiB, of which a filler takes 1.5: the third 1 MiB segment does not fit.
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![0u8; 3 * 512 * 1024]).unwrap();
    let mut server = Server::start(&format!(
        "[tuning]\nshards = 1\n[queue]\ndir = \"{}\"\nsegment_bytes = 1048576\n",
        mnt.join("queue").display()
    ));
    let mut c = server.connect();
    c.greet();
    let mut body = b"Subject: fill\r\n\r\n".to_vec();
    body.extend(
        std::iter::repeat_n(b"0123456789".repeat(10).into_iter().chain(*b"\r\n"), 1000).flatten(),
    );
    let mut acked = Vec::new();
    let mut full = None;
    for _ in 0..40 {
        let r = c.send_message("a@b.test", &["x@relay.test"], &body);
        if r.starts_with("250 ") {
            acked.push(queued_id(&r));
        } else {
            full = Some(r);
            break;
        }
    }
    let full = full.expect("the disk never filled");
    assert!(full.starts_with("452 4.3.1"), "{full}");
    assert!(!acked.is_empty());
    c.expect_cmd("NOOP", "250");
    // Space comes back: the next message is accepted, on the same session.
    std::fs::remove_file(&filler).unwrap();
    acked.push(queued_id(&c.send_message(
        "a@b.test",
        &["x@relay.test"],
        &body,
    )));
    c.expect_cmd("QUIT", "221");
    server.kill9();
    let dirs = vec![mnt.join("queue").join("shard-0")];
    let r = ringpost::queue::recovery::recover(&dirs, false).unwrap();
    let mut got: Vec<String> = r.index.live().map(|e| e.message.id.to_string()).collect();
    got.sort();
    acked.sort();
    for id in &acked {
        assert!(got.contains(id), "acknowledged {id} lost");
    }
}

/// SIGKILL while delivering under load, restart: every message that got a 250 reaches
/// the sink. Duplicates can only come from the crash window (delivered, outcome not yet on
/// disk); they are counted and reported.
#[test]
fn sigkill_during_delivery_delivers_every_acknowledged_message() {
    const MESSAGES: u64 = 2000;
    let mut r = Relay::start(
        "",
        "[server]\nhostname = \"relay.test\"\n[policy]\nrelay_domains = [\"sink.test\"]\n",
        "max_connections_per_host = 4\n",
        // A slow receiver, so that the queue is still full of work when the relay dies.
        &["--no-tls", "--latency", "1ms"],
    );
    let report = r.send(&[
        "--messages",
        &MESSAGES.to_string(),
        "--connections",
        "20",
        "--domain",
        "sink.test",
        "--seed",
        "11",
    ]);
    let accepted = report["messages_accepted"].as_u64().unwrap();
    assert_eq!(accepted, MESSAGES);
    let before = r.wait_sink("delivered_messages", 100)["delivered_messages"]
        .as_u64()
        .unwrap();
    r.server.kill9();
    assert!(
        before < MESSAGES,
        "everything was delivered before the kill; the test proves nothing"
    );
    r.server.restart();
    let s = r.wait_sink("delivered_messages", MESSAGES);
    assert_eq!(s["corrupted"], 0);
    wait_until("the queue empties", || {
        read_queue(&r.server.queue_dir()).is_empty()
    });
    eprintln!(
        "delivery crash test: killed after {before} of {MESSAGES} delivered; after restart all {MESSAGES} arrived; {} duplicates (crash window)",
        r.sink_stats()["duplicated"]
    );
}

/// SIGTERM while delivering: the relay finishes what is in flight, records it, exits 0;
/// a restart delivers the rest and nothing twice.
#[test]
fn sigterm_during_delivery_leaves_nothing_marked_undelivered() {
    const MESSAGES: u64 = 1000;
    let mut r = Relay::start(
        "",
        "[server]\nhostname = \"relay.test\"\nshutdown_grace = \"5s\"\n[policy]\nrelay_domains = [\"sink.test\"]\n",
        "max_connections_per_host = 2\n",
        &["--no-tls", "--latency", "1ms"],
    );
    r.send(&[
        "--messages",
        &MESSAGES.to_string(),
        "--connections",
        "10",
        "--domain",
        "sink.test",
        "--seed",
        "12",
    ]);
    r.wait_sink("delivered_messages", 50);
    let status = r.server.terminate();
    assert!(status.success(), "{}", r.server.stderr());
    r.server.restart();
    let s = r.wait_sink("delivered_messages", MESSAGES);
    assert_eq!(
        s["duplicated"], 0,
        "a clean shutdown leaves no crash window: {s}"
    );
}
