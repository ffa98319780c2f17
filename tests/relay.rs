//! Relaying end to end, the real binaries on loopback: loadgen dns answers the MX lookups,
//! ringpost relays, loadgen sink receives (and records) what arrives.

mod common;

use common::*;
use std::time::Duration;

/// Relays anything for loopback clients.
const RELAY_POLICY_ANY: &str =
    "[server]\nhostname = \"relay.test\"\n[policy]\nrelay_networks = [\"127.0.0.0/8\"]\n";
const RELAY_POLICY: &str = "[server]\nhostname = \"relay.test\"\n[policy]\nrelay_domains = [\"sink.test\", \"a.test\", \"b.test\"]\n";

fn send_one(r: &Relay, from: &str, to: &[&str], body: &[u8]) -> String {
    let mut c = r.server.connect();
    c.greet();
    let reply = c.send_message(from, to, body);
    let id = queued_id(&reply);
    c.expect_cmd("QUIT", "221");
    id
}

#[test]
fn arrives_byte_identical_but_for_received() {
    let r = Relay::start("", RELAY_POLICY, "", &[]);
    let body = b"From: s@sender.test\r\nSubject: exact\r\n\r\n.leading dot\r\n..two\r\nend\r\n";
    let id = send_one(&r, "s@sender.test", &["rcpt@sink.test"], body);
    let (env, eml) = r.wait_for("rcpt@sink.test");
    assert_eq!(env["mail_from"], "s@sender.test");
    assert_eq!(without_received(&eml), &body[..]);
    assert!(String::from_utf8_lossy(&eml).starts_with(&format!(
        "Received: from client.test ([127.0.0.1])\r\n\tby relay.test (ringpost) with ESMTP id {id}"
    )));
    assert_eq!(
        env["tls"], true,
        "opportunistic STARTTLS against a sink that offers it"
    );
    // Finished: the queue empties.
    wait_until("the queue empties", || {
        read_queue(&r.server.queue_dir()).is_empty()
    });
}

#[test]
fn two_sites_get_one_copy_each_with_their_recipients() {
    let zone = "a.test MX 10 mx.sink.test\nb.test MX 10 mx2.sink.test\n";
    let r = Relay::start(zone, RELAY_POLICY, "", &[]);
    send_one(
        &r,
        "s@sender.test",
        &["x@a.test", "y@b.test", "z@a.test"],
        b"Subject: two sites\r\n\r\nhi\r\n",
    );
    r.wait_sink("messages", 2);
    let got = r.recorded();
    assert_eq!(got.len(), 2);
    let mut rcpts: Vec<Vec<String>> = got
        .iter()
        .map(|(env, _)| {
            let mut v: Vec<String> = env["rcpt_to"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect();
            v.sort();
            v
        })
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        vec![
            vec!["x@a.test".to_string(), "z@a.test".to_string()],
            vec!["y@b.test".to_string()]
        ]
    );
}

#[test]
fn batching_per_site() {
    let shards = batching_per_site_with(Some("shard"));
    assert_eq!(shards, 2, "each shard delivers what it accepted");
}

#[test]
fn batching_per_site_on_the_owner_shard() {
    let shards = batching_per_site_with(Some("owner"));
    assert_eq!(shards, 1, "only the shard owning the site delivers");
}

#[test]
fn two_shards_deliver_a_site_from_its_owner_by_default() {
    let shards = batching_per_site_with(None);
    assert_eq!(shards, 1, "auto is owner with two shards");
}

/// 1,000 messages of 3 recipients to one site over two shards, either each shard with its
/// own pool (half the limit each) or one pool on the shard owning the site (`None`: the
/// default, `auto`). Returns how many shards delivered, by their exit summaries.
fn batching_per_site_with(pools: Option<&str>) -> usize {
    let setting = pools.map_or(String::new(), |p| format!("site_pools = \"{p}\"\n"));
    let mut r = Relay::start(
        "",
        &format!("{RELAY_POLICY}\n[tuning]\nshards = 2\n"),
        &format!("max_connections_per_host = 4\n{setting}"),
        &["--no-tls"],
    );
    let resolved = pools.unwrap_or("owner");
    let said = format!("site pools {resolved} (auto: 2 shards)");
    assert_eq!(
        r.server.stderr().contains(&said),
        pools.is_none(),
        "start-up names what auto picked: {}",
        r.server.stderr()
    );
    let report = r.send(&[
        "--messages",
        "1000",
        "--connections",
        "20",
        "--rcpts-per-message",
        "3",
        "--domain",
        "sink.test",
        "--seed",
        "5",
    ]);
    assert_eq!(report["messages_accepted"], 1000);
    let s = r.wait_sink("delivered_recipients", 3000);
    assert_eq!(s["delivered_messages"], 1000);
    assert_eq!(
        s["transactions"], 1000,
        "one transaction per message carries all its recipients"
    );
    assert_eq!(s["duplicated"], 0);
    assert_eq!(s["corrupted"], 0);
    let conns = s["connections"].as_u64().unwrap();
    assert!(
        conns <= 4 + 4,
        "at most max_connections_per_host at a time (plus reconnects): {conns}"
    );
    assert!(
        s["max_messages_per_connection"].as_u64().unwrap() >= 100,
        "{s}"
    );
    assert!(r.server.terminate().success());
    let log = r.server.stderr();
    let shards = shard_summaries(&log);
    assert_eq!(shards.len(), 2, "{log}");
    shards.iter().filter(|s| s.transactions > 0).count()
}

#[test]
fn mx_preference_fallback_and_implicit_mx() {
    // The best MX (127.0.0.3) refuses connections: the second one takes the mail.
    let zone = "a.test MX 10 down.sink.test\na.test MX 20 mx.sink.test\ndown.sink.test A 127.0.0.3\nb.test A 127.0.0.2\n";
    let r = Relay::start(zone, RELAY_POLICY, "", &[]);
    send_one(
        &r,
        "s@sender.test",
        &["fallback@a.test"],
        b"Subject: fallback\r\n\r\nx\r\n",
    );
    send_one(
        &r,
        "s@sender.test",
        &["implicit@b.test"],
        b"Subject: implicit\r\n\r\nx\r\n",
    );
    r.wait_for("fallback@a.test");
    r.wait_for("implicit@b.test");
}

/// A DSN arrives at the sink for `sender`; returns its text.
fn dsn_for(r: &Relay, sender: &str) -> String {
    let (env, eml) = r.wait_for(sender);
    assert_eq!(env["mail_from"], "", "DSNs come from <>");
    String::from_utf8_lossy(&eml).into_owned()
}

#[test]
fn null_mx_and_nxdomain_bounce_at_once() {
    let zone = "null.test MX 0 .\ngone.test NXDOMAIN\n";
    let r = Relay::start(zone, "[server]\nhostname = \"relay.test\"\n", "", &[]);
    send_one(
        &r,
        "n@sender.test",
        &["u@null.test"],
        b"Subject: null mx\r\n\r\nx\r\n",
    );
    let dsn = dsn_for(&r, "n@sender.test");
    assert!(
        dsn.contains("Action: failed")
            && dsn.contains("Status: 5.1.10")
            && dsn.contains("Final-Recipient: rfc822; u@null.test"),
        "{dsn}"
    );
    send_one(
        &r,
        "g@sender.test",
        &["u@gone.test"],
        b"Subject: nxdomain\r\n\r\nx\r\n",
    );
    let dsn = dsn_for(&r, "g@sender.test");
    assert!(dsn.contains("Status: 5.1.2"), "{dsn}");
    assert!(
        dsn.contains("Subject: nxdomain"),
        "original headers returned: {dsn}"
    );
}

#[test]
fn dns_down_then_up_is_deferred_then_delivered() {
    let mut r = Relay::start("", RELAY_POLICY, "", &[]);
    r.dns = None; // the DNS server is gone: lookups time out
    send_one(
        &r,
        "s@sender.test",
        &["later@sink.test"],
        b"Subject: dns\r\n\r\nx\r\n",
    );
    r.server.wait_log("status=deferred");
    assert!(r.server.stderr().contains("4.4.3"), "{}", r.server.stderr());
    r.restart_dns();
    r.wait_for("later@sink.test");
}

#[test]
fn temporary_failures_retry_then_deliver_once() {
    let r = Relay::start("", RELAY_POLICY, "", &[]);
    send_one(
        &r,
        "s@sender.test",
        &["tempfail-2@sink.test"],
        b"Subject: retry\r\n\r\nx\r\n",
    );
    r.wait_for("tempfail-2@sink.test");
    let s = r.sink_stats();
    assert_eq!(s["rcpt_deferred"], 2);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(r.sink_stats()["messages"], 1, "delivered exactly once");
}

#[test]
fn permanent_failure_bounces_to_the_sender() {
    let r = Relay::start("", RELAY_POLICY, "", &[]);
    let id = send_one(
        &r,
        "bounce-me@sender.test",
        &["reject@sink.test", "ok@sink.test"],
        b"Subject: half\r\n\r\nx\r\n",
    );
    let dsn = dsn_for(&r, "bounce-me@sender.test");
    for want in [
        "Content-Type: multipart/report; report-type=delivery-status",
        "Reporting-MTA: dns; relay.test",
        &format!("X-Ringpost-Queue-ID: {id}"),
        "Final-Recipient: rfc822; reject@sink.test",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; mx.sink.test",
        "Diagnostic-Code: smtp; 550 5.1.1",
        "Subject: half",
    ] {
        assert!(dsn.contains(want), "{want} missing:\n{dsn}");
    }
    assert!(
        !dsn.contains("Final-Recipient: rfc822; ok@sink.test"),
        "{dsn}"
    );
    r.wait_for("ok@sink.test");
}

#[test]
fn max_age_expiry_bounces() {
    let r = Relay::start("", RELAY_POLICY, "max_age = \"3s\"\n", &[]);
    send_one(
        &r,
        "old@sender.test",
        &["defer@sink.test"],
        b"Subject: expire\r\n\r\nx\r\n",
    );
    let dsn = dsn_for(&r, "old@sender.test");
    assert!(
        dsn.contains("Action: failed") && dsn.contains("Status: 4.4.7") && dsn.contains("expired"),
        "{dsn}"
    );
}

#[test]
fn forwards_and_lists_deliver_to_their_targets() {
    let config = "[server]\nhostname = \"relay.test\"\n[policy]\nrelay_domains = [\"sink.test\"]\n[[forward]]\nfrom = \"old@sink.test\"\nto = \"new@sink.test\"\n[[list]]\naddress = \"team@sink.test\"\nmembers = [\"m1@sink.test\", \"m2@sink.test\"]\n";
    let r = Relay::start("", config, "", &[]);
    let mut c = r.server.connect();
    c.greet();
    c.expect_cmd("MAIL FROM:<s@sender.test>", "250");
    c.expect_cmd("RCPT TO:<old@sink.test>", "251");
    c.expect_cmd("RCPT TO:<team@sink.test>", "250");
    c.expect_cmd("DATA", "354");
    c.send(b"Subject: expand\r\n\r\nx\r\n.\r\n");
    queued_id(&c.reply());
    let (env, _) = r.wait_for("new@sink.test");
    let mut rcpts: Vec<&str> = env["rcpt_to"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    rcpts.sort();
    assert_eq!(rcpts, vec!["m1@sink.test", "m2@sink.test", "new@sink.test"]);
}

#[test]
fn smarthost_and_lmtp_routes() {
    let lmtp_port = free_port();
    let lmtp_dir = TempDir::new("lmtp");
    let lmtp = Daemon::start(&[
        "sink".into(),
        "--lmtp".into(),
        "--listen".into(),
        format!("127.0.0.1:{lmtp_port}"),
        "--record".into(),
        lmtp_dir.0.display().to_string(),
    ]);
    let smart_port = free_port();
    let smart_dir = TempDir::new("smart");
    let smart = Daemon::start(&[
        "sink".into(),
        "--listen".into(),
        format!("127.0.0.1:{smart_port}"),
        "--record".into(),
        smart_dir.0.display().to_string(),
    ]);
    let config = format!(
        "[server]\nhostname = \"relay.test\"\n[policy]\nrelay_domains = [\"mailbox.test\", \"partner.test\"]\n[[route]]\ndomain = \"mailbox.test\"\nlmtp = \"127.0.0.1:{lmtp_port}\"\n[[route]]\ndomain = \"partner.test\"\nsmarthost = \"127.0.0.1:{smart_port}\"\n"
    );
    let r = Relay::start("", &config, "", &[]);
    send_one(
        &r,
        "s@sender.test",
        &["box1@mailbox.test", "reject-data@mailbox.test"],
        b"Subject: lmtp\r\n\r\nx\r\n",
    );
    send_one(
        &r,
        "s@sender.test",
        &["p@partner.test"],
        b"Subject: smarthost\r\n\r\nx\r\n",
    );
    let wait_file = |dir: &std::path::Path, what: &str| {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let found = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0) >= 2;
            if found {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nothing arrived at the {what}: {}",
                r.server.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_file(&lmtp_dir.0, "LMTP gateway");
    wait_file(&smart_dir.0, "smarthost");
    let env: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lmtp_dir.0.join("00000000.json")).unwrap())
            .unwrap();
    assert_eq!(
        env["rcpt_to"],
        serde_json::json!(["box1@mailbox.test"]),
        "LMTP: per-recipient replies after DATA"
    );
    // The recipient the LMTP server refused after DATA bounces on its own.
    let dsn = dsn_for(&r, "s@sender.test");
    assert!(
        dsn.contains("Final-Recipient: rfc822; reject-data@mailbox.test"),
        "{dsn}"
    );
    drop((lmtp, smart));
}

#[test]
fn mx_pointing_back_at_us_is_a_loop() {
    // The MX of loop.test is 127.0.0.1 and the delivery port is ringpost's own.
    let mut r = Relay::start(
        "loop.test MX 10 mx.sink.test\n",
        "[server]\nhostname = \"relay.test\"\n",
        "",
        &[],
    );
    let port = r.server.port;
    let cfg = std::fs::read_to_string(&r.server.config).unwrap();
    let cfg = cfg.replace(
        &format!("port = {}", r.sink_port),
        &format!("port = {port}"),
    );
    std::fs::write(&r.server.config, cfg).unwrap();
    r.server.kill9();
    r.server.restart();
    let mut c = r.server.connect();
    c.greet();
    queued_id(&c.send_message(
        "s@sender.test",
        &["u@loop.test"],
        b"Subject: loop\r\n\r\nx\r\n",
    ));
    r.server.wait_log("loops back to myself");
    assert!(r
        .server
        .stderr()
        .contains("554 5.4.6 mail for loop.test loops back to myself"));
}

#[test]
fn etrn_retries_a_domain_now() {
    let r = Relay::start(
        "",
        RELAY_POLICY,
        "retry_initial = \"1h\"\nretry_max = \"1h\"\n",
        &[],
    );
    send_one(
        &r,
        "s@sender.test",
        &["tempfail-1@sink.test"],
        b"Subject: etrn\r\n\r\nx\r\n",
    );
    r.wait_sink("rcpt_deferred", 1);
    std::thread::sleep(Duration::from_millis(300));
    let mut c = r.server.connect();
    c.greet();
    c.expect_cmd("ETRN sink.test", "250");
    r.wait_for("tempfail-1@sink.test");
}

#[test]
fn success_notice_when_the_next_hop_has_no_dsn() {
    let r = Relay::start("", RELAY_POLICY, "", &["--disable", "dsn"]);
    let mut c = r.server.connect();
    c.greet();
    c.expect_cmd("MAIL FROM:<notify@sender.test> RET=HDRS ENVID=E1", "250");
    c.expect_cmd(
        "RCPT TO:<ok@sink.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;ok@sink.test",
        "250",
    );
    c.expect_cmd("DATA", "354");
    c.send(b"Subject: notify me\r\n\r\nx\r\n.\r\n");
    queued_id(&c.reply());
    r.wait_for("ok@sink.test");
    let dsn = dsn_for(&r, "notify@sender.test");
    for want in [
        "Action: relayed",
        "Status: 2.0.0",
        "Original-Envelope-Id: E1",
        "Original-Recipient: rfc822; ok@sink.test",
    ] {
        assert!(dsn.contains(want), "{want} missing:\n{dsn}");
    }
}

#[test]
fn one_delay_warning_names_every_deferred_recipient_of_the_transaction() {
    let r = Relay::start(
        "",
        RELAY_POLICY,
        "delay_warning = \"1us\"\nretry_initial = \"1h\"\nretry_max = \"1h\"\n",
        &[],
    );
    send_one(
        &r,
        "late@sender.test",
        &["tempfail-5@sink.test", "tempfail-6@sink.test"],
        b"Subject: delayed\r\n\r\nx\r\n",
    );
    let dsn = dsn_for(&r, "late@sender.test");
    for want in [
        "Final-Recipient: rfc822; tempfail-5@sink.test",
        "Final-Recipient: rfc822; tempfail-6@sink.test",
        "Status: 4.2.0",
    ] {
        assert!(dsn.contains(want), "{want} missing:\n{dsn}");
    }
    assert_eq!(dsn.matches("Action: delayed").count(), 2, "{dsn}");
    // Both deferrals came in one report: one warning, not one per recipient.
    std::thread::sleep(Duration::from_millis(500));
    let warnings = r
        .recorded()
        .iter()
        .filter(|(env, _)| env["rcpt_to"][0] == "late@sender.test")
        .count();
    assert_eq!(warnings, 1);
    r.server.wait_log("status=deferred");
}

#[test]
fn truncated_answers_go_over_tcp_and_cnames_are_followed() {
    let zone = "a.test TRUNCATE\na.test MX 10 mx.sink.test\nb.test CNAME a.test\n";
    let r = Relay::start(zone, RELAY_POLICY, "", &[]);
    send_one(
        &r,
        "s@sender.test",
        &["tcp@a.test"],
        b"Subject: tcp\r\n\r\nx\r\n",
    );
    send_one(
        &r,
        "s@sender.test",
        &["alias@b.test"],
        b"Subject: cname\r\n\r\nx\r\n",
    );
    r.wait_for("tcp@a.test");
    r.wait_for("alias@b.test");
}

/// Waits until the relay logged a deferral for `rcpt`; returns the log line.
fn deferral_of(r: &Relay, rcpt: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(l) = r
            .server
            .stderr()
            .lines()
            .find(|l| l.contains(&format!("to=<{rcpt}>")) && l.contains("status=deferred"))
        {
            return l.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{rcpt} never deferred:\n{}",
            r.server.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hostile_receivers_end_deferred_not_delivered() {
    // The content as one BDAT chunk (the sink offers CHUNKING), and after DATA.
    hostile_receivers(&[]);
    hostile_receivers(&["--disable", "chunking"]);
}

fn hostile_receivers(sink_args: &[&str]) {
    let mut args = vec!["--no-tls", "--slow-latency", "1500ms"];
    args.extend_from_slice(sink_args);
    let r = Relay::start("", RELAY_POLICY, "data_timeout = \"1s\"\ncommand_timeout = \"5s\"\nretry_initial = \"1h\"\nretry_max = \"1h\"\n", &args);
    for rcpt in [
        "hang@sink.test",
        "disconnect@sink.test",
        "garbage@sink.test",
        "bye@sink.test",
        "slow@sink.test",
    ] {
        send_one(
            &r,
            "s@sender.test",
            &[rcpt],
            format!("Subject: {rcpt}\r\n\r\nx\r\n").as_bytes(),
        );
    }
    // Hangs after the content (the data timeout), drops the connection after the content
    // and before the reply (the classic duplicate window), answers garbage, or says 421
    // in the middle: all temporary.
    assert!(deferral_of(&r, "hang@sink.test").contains("4.4.2"));
    assert!(deferral_of(&r, "disconnect@sink.test").contains("4.4.2"));
    assert!(deferral_of(&r, "garbage@sink.test").contains("4.4.2"));
    assert!(deferral_of(&r, "bye@sink.test").contains("421 4.3.2"));
    // Slow is not broken: it is delivered.
    r.wait_for("slow@sink.test");
    let s = r.wait_sink("messages", 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        r.sink_stats()["messages"],
        1,
        "only the slow one was delivered: {s}"
    );
    let (env, _) = r.wait_for("slow@sink.test");
    assert_eq!(env["bdat"], sink_args.is_empty(), "{env}");
}

#[test]
fn hostile_dns_answers_are_not_believed() {
    let zone = "junk.test GARBAGE\nforged.test WRONGID\nforged.test MX 10 mx.sink.test\nloop1.test CNAME loop2.test\nloop2.test CNAME loop1.test\n";
    let r = Relay::start(
        zone,
        "[server]\nhostname = \"relay.test\"\n[policy]\nrelay_networks = [\"127.0.0.0/8\"]\n",
        "retry_initial = \"1h\"\nretry_max = \"1h\"\n",
        &[],
    );
    for rcpt in ["u@junk.test", "u@forged.test", "u@loop1.test"] {
        send_one(&r, "s@sender.test", &[rcpt], b"Subject: dns\r\n\r\nx\r\n");
    }
    for rcpt in ["u@junk.test", "u@forged.test", "u@loop1.test"] {
        let line = deferral_of(&r, rcpt);
        assert!(line.contains("4.4.3"), "{line}");
    }
    assert_eq!(
        r.sink_stats()["messages"],
        0,
        "a forged answer must not route mail"
    );
}

#[test]
fn a_huge_mx_answer_goes_over_tcp_and_routes() {
    // 200 MX records with long names: some 15 KiB of answer, far past UDP's 512 octets;
    // the server says TC and the resolver asks again over TCP. All point at the sink.
    let mut zone = String::new();
    for i in 0..200 {
        let host = format!("mx-{i:03}-{}.sink.test", "x".repeat(40));
        zone.push_str(&format!(
            "huge.test MX {} {host}\n{host} A 127.0.0.1\n",
            10 + i
        ));
    }
    let r = Relay::start(&zone, RELAY_POLICY_ANY, "", &["--no-tls"]);
    send_one(
        &r,
        "s@sender.test",
        &["u@huge.test"],
        b"Subject: huge\r\n\r\nx\r\n",
    );
    r.wait_for("u@huge.test");
}

#[test]
fn a_message_chained_behind_a_dropped_one_is_delivered_not_deferred() {
    // One connection for the site: while it delivers, the rest wait, and each content
    // goes out with the next message's envelope behind it (RFC 2920 3.1).
    let r = Relay::start(
        "",
        RELAY_POLICY,
        "max_connections_per_host = 1\nretry_initial = \"1h\"\nretry_max = \"1h\"\n",
        // Chaining is DATA's: a next hop with CHUNKING gets each message as one chunk.
        &[
            "--no-tls",
            "--slow-latency",
            "500ms",
            "--disable",
            "chunking",
        ],
    );
    let mut c = r.server.connect();
    c.greet();
    const N: usize = 20;
    for i in 0..N {
        // The first is answered slowly: the rest queue up behind it meanwhile.
        let rcpt = match i {
            0 => "slow@sink.test".to_string(),
            _ if i == N / 2 => "disconnect@sink.test".to_string(),
            _ => format!("u{i}@sink.test"),
        };
        let body = format!("Subject: chain {i}\r\n\r\nx\r\n");
        let reply = c.send_message("s@sender.test", &[&rcpt], body.as_bytes());
        assert!(reply.starts_with("250 2.0.0"), "{reply}");
    }
    c.expect_cmd("QUIT", "221");
    // The sink drops the connection after the dropped message's content, before its
    // reply: that message is deferred (the duplicate window). The message whose envelope
    // rode behind it got no reply at all: it goes again on a fresh connection.
    assert!(deferral_of(&r, "disconnect@sink.test").contains("4.4.2"));
    let s = r.wait_sink("messages", N as u64 - 1);
    std::thread::sleep(Duration::from_millis(300));
    let deferred = r.server.stderr().matches("status=deferred").count();
    assert_eq!(
        deferred,
        1,
        "only the dropped message waits: {}",
        r.server.stderr()
    );
    assert_eq!(r.sink_stats()["messages"], N as u64 - 1, "{s}");
    assert_eq!(r.sink_stats()["duplicates"].as_u64().unwrap_or(0), 0);
    let mut r = r;
    assert!(r.server.terminate().success());
    let (_, chained) = delivery_summary(&r.server.stderr());
    assert!(
        chained > 0,
        "no envelope rode behind a content: {}",
        r.server.stderr()
    );
}

/// One shard's delivery summary at shutdown: "delivery: C connections, T transactions
/// (K chained, B chunked)".
struct ShardSummary {
    connections: u64,
    transactions: u64,
    chained: u64,
    chunked: u64,
}

fn shard_summaries(stderr: &str) -> Vec<ShardSummary> {
    stderr
        .lines()
        .filter(|l| l.contains(": delivery: "))
        .map(|line| {
            let number = |after: &str| -> u64 {
                line.split(after)
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next()?.parse().ok())
                    .unwrap_or(0)
            };
            ShardSummary {
                connections: number("delivery: "),
                transactions: number(" connections, "),
                chained: number(" transactions ("),
                chunked: number(" chained, "),
            }
        })
        .collect()
}

/// Connections and chained transactions over all shards.
fn delivery_summary(stderr: &str) -> (u64, u64) {
    shard_summaries(stderr)
        .iter()
        .fold((0, 0), |(c, k), s| (c + s.connections, k + s.chained))
}

/// A relay (up to 4 connections per site) whose next hop holds its reply to the first
/// message's DATA for `slow`, and a second message for the same site sent 150 ms after
/// the first, when the first connection's envelope is out.
fn second_message_behind_a_slow_one(slow: &str) -> Relay {
    let r = Relay::start(
        "",
        RELAY_POLICY,
        "max_connections_per_host = 4\n",
        &["--no-tls", "--slow-latency", slow, "--disable", "chunking"],
    );
    let mut c = r.server.connect();
    c.greet();
    for (i, rcpt) in ["slow@sink.test", "u2@sink.test"].into_iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(150));
        }
        let body = format!("Subject: {i}\r\n\r\nx\r\n");
        let reply = c.send_message("s@sender.test", &[rcpt], body.as_bytes());
        assert!(reply.starts_with("250 2.0.0"), "{reply}");
    }
    c.expect_cmd("QUIT", "221");
    r
}

#[test]
fn a_message_for_a_busy_site_rides_behind_the_transaction_in_flight() {
    // The first message's envelope is out and its 354 is slow in coming: the second
    // waits for that connection (its envelope goes out behind the first content) instead
    // of opening another, though the pool may grow to 4.
    let mut r = second_message_behind_a_slow_one("600ms");
    r.wait_sink("messages", 2);
    assert!(r.server.terminate().success());
    let (connections, chained) = delivery_summary(&r.server.stderr());
    assert_eq!(
        (connections, chained),
        (1, 1),
        "one connection, the second message chained: {}",
        r.server.stderr()
    );
}

#[test]
fn mail_left_for_a_stalled_connection_goes_on_another_before_long() {
    // The next hop holds the first message's 354 for 8 s. The second is left for that
    // connection at first (it is about to chain), but after about a second without
    // progress an idle or a new connection takes it: it arrives long before the first.
    let r = second_message_behind_a_slow_one("8s");
    r.wait_for("u2@sink.test");
    let slow_arrived = r.recorded().iter().any(|(env, _)| {
        env["rcpt_to"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "slow@sink.test"))
    });
    assert!(
        !slow_arrived,
        "the second message waited for the stalled one"
    );
    r.wait_sink("messages", 2);
}

#[test]
fn content_goes_as_one_bdat_chunk_to_a_next_hop_that_offers_chunking() {
    let r = Relay::start("", RELAY_POLICY, "", &[]);
    // Dot-stuffed in the queue, unstuffed in the chunk.
    let body = b"From: s@sender.test\r\nSubject: chunk\r\n\r\n.leading dot\r\n..two\r\nend\r\n";
    send_one(&r, "s@sender.test", &["rcpt@sink.test"], body);
    let (env, eml) = r.wait_for("rcpt@sink.test");
    assert_eq!(env["bdat"], true, "{env}");
    assert_eq!(without_received(&eml), &body[..]);
    // BDAT in, with content that does not end its last line: out with the CRLF that DATA
    // would have given it.
    let mut c = r.server.connect();
    c.greet();
    c.expect_cmd("MAIL FROM:<s@sender.test>", "250");
    c.expect_cmd("RCPT TO:<open@sink.test>", "250");
    let content = b"Subject: open\r\n\r\n.dot line\r\nlast";
    c.send(format!("BDAT {} LAST\r\n", content.len()).as_bytes());
    c.send(content);
    c.expect("250 2.0.0");
    c.expect_cmd("QUIT", "221");
    let (env, eml) = r.wait_for("open@sink.test");
    assert_eq!(env["bdat"], true, "{env}");
    assert_eq!(
        without_received(&eml),
        b"Subject: open\r\n\r\n.dot line\r\nlast\r\n"
    );
    let mut r = r;
    assert!(r.server.terminate().success());
    let chunked: u64 = shard_summaries(&r.server.stderr())
        .iter()
        .map(|s| s.chunked)
        .sum();
    assert_eq!(chunked, 2, "{}", r.server.stderr());
}

#[test]
fn data_when_chunking_is_off_or_not_offered() {
    let body = b"Subject: data\r\n\r\n.dot\r\nend\r\n";
    for (delivery, sink) in [
        ("chunking = false\n", &[][..]),
        ("", &["--disable", "chunking"][..]),
    ] {
        let r = Relay::start("", RELAY_POLICY, delivery, sink);
        send_one(&r, "s@sender.test", &["rcpt@sink.test"], body);
        let (env, eml) = r.wait_for("rcpt@sink.test");
        assert_eq!(env["bdat"], false, "{delivery} {sink:?}: {env}");
        assert_eq!(without_received(&eml), &body[..]);
    }
}

#[test]
fn a_connection_the_next_hop_closed_while_idle_gets_no_chunk() {
    // The next hop goes away while its connection sits idle in the pool. The next
    // message is not sent as a chunk into the dead connection (where a missing reply
    // would leave it deferred for an hour, maybe delivered): the connection is found
    // closed first, and the message goes at once on a new one.
    let mut r = Relay::start(
        "",
        RELAY_POLICY,
        "idle_timeout = \"60s\"\nretry_initial = \"1h\"\nretry_max = \"1h\"\n",
        &["--no-tls"],
    );
    let body = b"Subject: idle\r\n\r\nx\r\n";
    send_one(&r, "s@sender.test", &["first@sink.test"], body);
    r.wait_for("first@sink.test");
    r.restart_sink();
    send_one(&r, "s@sender.test", &["second@sink.test"], body);
    let (env, _) = r.wait_for("second@sink.test");
    assert_eq!(env["bdat"], true, "{env}");
    assert!(
        !r.server.stderr().contains("status=deferred"),
        "{}",
        r.server.stderr()
    );
    assert!(r.server.terminate().success());
    let (connections, _) = delivery_summary(&r.server.stderr());
    assert_eq!(connections, 2, "{}", r.server.stderr());
}

#[test]
fn a_next_hop_that_offers_chunking_but_refuses_bdat_gets_data() {
    // It answers BDAT "502 not implemented" and reads the chunk as commands. The message
    // goes again at once with DATA on a fresh connection, and so does the site's next.
    let r = Relay::start(
        "",
        RELAY_POLICY,
        "retry_initial = \"1h\"\nretry_max = \"1h\"\n",
        &["--no-tls", "--bdat-unimplemented"],
    );
    for rcpt in ["first@sink.test", "second@sink.test"] {
        let body = format!("Subject: {rcpt}\r\n\r\nx\r\n");
        send_one(&r, "s@sender.test", &[rcpt], body.as_bytes());
        let (env, _) = r.wait_for(rcpt);
        assert_eq!(env["bdat"], false, "{env}");
    }
    let log = r.server.stderr();
    assert_eq!(
        log.matches("offers CHUNKING but refused BDAT").count(),
        1,
        "{log}"
    );
    assert!(
        !log.contains("status=deferred") && !log.contains("status=bounced"),
        "{log}"
    );
    assert_eq!(r.sink_stats()["messages"], 2);
}
