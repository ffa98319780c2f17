//! The command line: config errors, check-config, queue list/show.

mod common;

use common::*;
use std::process::Command;

#[test]
fn bad_config_exits_2_naming_the_key() {
    let out = run_with_config(
        "serve",
        "[[listen]]\naddr = \"127.0.0.1:2525\"\n[policy]\nrelay_domain = [\"x.test\"]\n",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("relay_domain") && err.contains("bad.toml"),
        "{err}"
    );

    let out = run_with_config(
        "check-config",
        "[[listen]]\naddr = \"127.0.0.1:2525\"\n[server]\ncommand_timeout = \"10\"\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("command_timeout"));
}

#[test]
fn check_config_prints_effective_config() {
    let out = Command::new(binary()).arg("check-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "addr = \"127.0.0.1:2525\"",
        "dir = \"./ringpost-queue\"",
        "command_timeout = \"5m\"",
        "shards = 0",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
}

#[test]
fn queue_list_and_show() {
    let server = Server::start("");
    let mut c = server.connect();
    c.greet();
    let id = queued_id(&c.send_message(
        "sender@b.test",
        &["x@relay.test", "y@relay.test"],
        b"Subject: q\r\n\r\nqueued\r\n",
    ));
    let out = Command::new(binary())
        .args(["queue", "list", "--queue-dir"])
        .arg(server.queue_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let line = text
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not listed:\n{text}"));
    assert!(
        line.contains("sender@b.test")
            && line.contains("x@relay.test y@relay.test")
            && (line.contains("ready") || line.contains("deferred")),
        "{line}"
    );
    assert!(text.contains("-- 1 messages"));
    let out = Command::new(binary())
        .args(["queue", "show", &id, "--body", "--config"])
        .arg(&server.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("sender: <sender@b.test>") && text.contains("recipient: <y@relay.test> "),
        "{text}"
    );
    assert!(text.ends_with("Subject: q\r\n\r\nqueued\r\n"), "{text}");
    let out = Command::new(binary())
        .args(["queue", "show", "0000000000000000", "--queue-dir"])
        .arg(server.queue_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn tuning_profiles_are_valid_configs() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "toml") {
            let out = Command::new(binary())
                .args(["check-config", "--config"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(n >= 5, "default plus the 2, 8, 32 and 64 core profiles");
}

#[test]
fn tune_suggests_a_profile_for_this_machine() {
    let dir = TempDir::new("tune");
    let out = Command::new(binary())
        .args(["tune", "--queue-dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("fsync p50") && text.contains("shards = ") && text.contains("cpus = ["),
        "{text}"
    );
    let cfg = dir.0.join("suggested.toml");
    std::fs::write(
        &cfg,
        format!("[[listen]]\naddr = \"127.0.0.1:2525\"\n{text}"),
    )
    .unwrap();
    let check = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn queue_sync_auto_measures_the_disk_at_start() {
    let server = Server::start("");
    let err = server.stderr();
    let line = err
        .lines()
        .find(|l| l.contains("queue sync"))
        .unwrap_or_else(|| panic!("no queue sync line: {err}"));
    assert!(
        (line.contains("queue sync inline") || line.contains("queue sync ring"))
            && line.contains("auto: fsync p50"),
        "{line}"
    );
    // The probe leaves nothing behind in the queue.
    let left: Vec<_> = std::fs::read_dir(server.queue_dir())
        .expect("queue dir")
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with("shard-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // An explicit mode is taken as it is: no probe.
    let dir = TempDir::new("cli-sync");
    let fixed = Server::start(&format!(
        "[queue]\ndir = \"{}\"\nsync = \"ring\"\n",
        dir.0.join("queue").display()
    ));
    assert!(!fixed.stderr().contains("queue sync"), "{}", fixed.stderr());
}

/// The CPUs each shard thread may run on, from /proc (comm "shard-K-...").
fn shard_cpu_lists(pid: u32) -> Vec<String> {
    let mut lists = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let path = task.expect("task").path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with("shard-") {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        if let Some(l) = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
            lists.push(l["Cpus_allowed_list:".len()..].trim().to_string());
        }
    }
    lists
}

/// `[tuning] placement`: shards pinned one CPU each by default, or floating over the
/// shards' CPUs; the start-up lines say which.
#[test]
fn shards_are_pinned_or_floating() {
    let pinned = Server::start("[tuning]\nshards = 2\ncpus = [0, 0]\n");
    let pid = pinned.child.as_ref().expect("running").id();
    let lists = shard_cpu_lists(pid);
    assert!(!lists.is_empty(), "no shard threads");
    assert!(lists.iter().all(|l| l == "0"), "{lists:?}");
    assert!(
        pinned.stderr().contains("shard 1 on cpu 0"),
        "{}",
        pinned.stderr()
    );
    let allowed = ringpost::shard::allowed_cpus();
    if allowed.len() < 2 {
        eprintln!("one CPU: floating over two cannot be shown here");
        return;
    }
    let (a, b) = (allowed[0], allowed[1]);
    let floating = Server::start(&format!(
        "[tuning]\nshards = 2\ncpus = [{a}, {b}]\nplacement = \"floating\"\n"
    ));
    let pid = floating.child.as_ref().expect("running").id();
    let lists = shard_cpu_lists(pid);
    let both = if b == a + 1 {
        format!("{a}-{b}")
    } else {
        format!("{a},{b}")
    };
    // The executor threads float over both; glommio's helper threads share the name.
    assert!(
        lists.iter().filter(|l| **l == both).count() >= 2,
        "{lists:?}"
    );
    assert!(
        floating.stderr().contains("floating over cpus"),
        "{}",
        floating.stderr()
    );
}
