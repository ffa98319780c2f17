//! Inbound SMTP against the real binary over loopback: transactions, pipelining, every
//! reply of the DESIGN.md table, SMTP smuggling, and what lands in the queue log.

mod common;

use common::*;
use std::time::Duration;

const POLICY: &str = r#"
[server]
hostname = "relay.test"
postmaster = "ops@relay.test"
max_errors = 50
[policy]
relay_domains = ["example.test"]
relay_networks = ["127.0.0.0/8"]
max_message_bytes = 2000
max_recipients = 3
max_hops = 3
vrfy = "on"
expn = "on"
[[forward]]
from = "old@example.test"
to = "new@elsewhere.test"
[[forward]]
from = "gone@example.test"
to = "there@elsewhere.test"
mode = "moved"
[[list]]
address = "team@example.test"
members = ["a@one.test", "b@two.test", "a@one.test"]
[[list]]
address = "team@other.test"
members = ["c@one.test"]
"#;

#[test]
fn whole_transaction_lands_byte_for_byte() {
    let server = Server::start(POLICY);
    let mut c = server.connect();
    c.greet();
    let body = b"From: a@b.test\r\nSubject: exact\r\n\r\n.leading dot\r\n..two dots\r\n\xc3\xa9 8-bit\r\nlast line\r\n";
    let reply = c.send_message("a@b.test", &["x@example.test"], body);
    let id = queued_id(&reply);
    c.expect_cmd("QUIT", "221 2.0.0");
    let q = read_queue(&server.queue_dir());
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].id, id);
    assert_eq!(q[0].sender, "a@b.test");
    assert_eq!(q[0].recipients, vec!["x@example.test"]);
    assert_eq!(without_received(&q[0].content), &body[..]);
    // Stored in wire form, ready to be sent as DATA as it is.
    assert_eq!(without_received(&q[0].wire), &dot_stuff(body)[..]);
    let received = String::from_utf8_lossy(&q[0].content);
    assert!(received.starts_with(
        "Received: from client.test ([127.0.0.1])\r\n\tby relay.test (ringpost) with ESMTP id "
    ));
    assert!(received.contains(&format!("id {id}\r\n\tfor <x@example.test>; ")));
}

#[test]
fn pipelined_transactions_get_ordered_replies() {
    let server =
        Server::start(&POLICY.replace("relay_networks = [\"127.0.0.0/8\"]", "relay_networks = []"));
    let mut c = server.connect();
    c.greet();
    let mut batch = Vec::new();
    for i in 0..3 {
        batch.extend_from_slice(format!("MAIL FROM:<s{i}@b.test>\r\nRCPT TO:<r{i}@example.test>\r\nRCPT TO:<bad@nowhere.test>\r\nDATA\r\n").as_bytes());
    }
    // With PIPELINING the client waits for 354 before sending content: one group at a time.
    c.send(&batch[..batch.len() / 3]);
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
    c.expect("554 5.7.1 Relay access denied");
    c.expect("354 ");
    c.send(b"Subject: 0\r\n\r\nzero\r\n.\r\nMAIL FROM:<s1@b.test>\r\nRCPT TO:<r1@example.test>\r\nDATA\r\n");
    c.expect("250 2.0.0 Ok: queued as ");
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
    c.expect("354 ");
    c.send(b"Subject: 1\r\n\r\none\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n");
    c.expect("250 2.0.0 Ok: queued as ");
    c.expect("250 2.0.0 Ok");
    c.expect("250 2.0.0 Ok");
    c.expect("221 2.0.0");
    assert!(c.closed());
    assert_eq!(read_queue(&server.queue_dir()).len(), 2);
}

#[test]
fn ehlo_advertises_extensions() {
    let server = Server::start(POLICY);
    let mut c = server.connect();
    c.expect("220 relay.test ESMTP");
    let r = c.cmd("EHLO client.test");
    for kw in [
        "PIPELINING",
        "SIZE 2000",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "CHUNKING",
        "DSN",
        "ETRN",
        "VRFY",
        "EXPN",
    ] {
        assert!(
            r.contains(&format!("250-{kw}\r\n")) || r.contains(&format!("250 {kw}\r\n")),
            "{kw} missing: {r}"
        );
    }
    assert!(!r.contains("STARTTLS"), "no TLS configured: {r}");
    c.expect_cmd("HELO client.test", "250 relay.test");
}

#[test]
fn design_table_replies() {
    let server = Server::start(POLICY);
    let mut c = server.connect();
    c.greet();
    c.expect_cmd("MAIL FROM:<a@b.test>", "250 2.1.0");
    c.expect_cmd(
        "RCPT TO:<old@example.test>",
        "251 2.1.5 User not local; will forward to <new@elsewhere.test>",
    );
    c.expect_cmd(
        "RCPT TO:<gone@example.test>",
        "551 5.1.6 User not local; please try <there@elsewhere.test>",
    );
    c.expect_cmd("RCPT TO:<team@example.test>", "250 2.1.5");
    c.expect_cmd("RCPT TO:<Postmaster>", "250 2.1.5");
    c.expect_cmd("RCPT TO:<one-too-many@example.test>", "452 4.5.3");
    c.expect_cmd("DATA", "354");
    c.send(b"Subject: t\r\n\r\nx\r\n.\r\n");
    c.expect("250 2.0.0 Ok: queued as ");
    let q = read_queue(&server.queue_dir());
    let mut rcpts = q[0].recipients.clone();
    rcpts.sort();
    // Forward replaced, list expanded (deduplicated), Postmaster routed to [server].
    assert_eq!(
        rcpts,
        vec![
            "a@one.test",
            "b@two.test",
            "new@elsewhere.test",
            "ops@relay.test"
        ]
    );

    c.expect_cmd("VRFY old@example.test", "251 2.1.5");
    c.expect_cmd("VRFY gone@example.test", "551 5.1.6");
    c.expect_cmd(
        "VRFY anyone@example.test",
        "250 2.1.5 <anyone@example.test>",
    );
    c.expect_cmd("VRFY someone@nowhere.test", "550 5.1.1");
    let amb = c.cmd("VRFY team");
    assert!(
        amb.starts_with("553-5.1.4") && amb.contains("553 5.1.4"),
        "{amb}"
    );
    let members = c.cmd("EXPN team@example.test");
    assert_eq!(
        members,
        "250-2.1.5 <a@one.test>\r\n250-2.1.5 <b@two.test>\r\n250 2.1.5 <a@one.test>\r\n"
    );
    c.expect_cmd("EXPN old@example.test", "550 5.1.1");
    c.expect_cmd("TURN", "502 5.5.1");
    c.expect_cmd(
        "ETRN example.test",
        "250 2.0.0 Queuing for node <example.test> started",
    );
    let help = c.cmd("HELP");
    assert!(
        help.starts_with("214-") && help.lines().last().unwrap().starts_with("214 "),
        "{help}"
    );
    c.expect_cmd("NOOP", "250 2.0.0");
    c.expect_cmd("QUIT", "221 2.0.0");
}

#[test]
fn relay_denied_for_untrusted_clients() {
    let server = Server::start(&POLICY.replace(
        "relay_networks = [\"127.0.0.0/8\"]",
        "relay_networks = [\"10.0.0.0/8\"]",
    ));
    let mut c = server.connect();
    c.greet();
    c.expect_cmd("MAIL FROM:<a@b.test>", "250");
    c.expect_cmd("RCPT TO:<x@nowhere.test>", "554 5.7.1 Relay access denied");
    c.expect_cmd("RCPT TO:<x@[192.0.2.1]>", "554 5.7.1 Relay access denied");
    c.expect_cmd("RCPT TO:<x@EXAMPLE.test>", "250 2.1.5");
    c.expect_cmd("RCPT TO:<team@example.test>", "250 2.1.5");
    c.expect_cmd("RSET", "250");
    c.expect_cmd("ETRN example.test", "459 4.7.1");
}

#[test]
fn vrfy_and_expn_off_by_default() {
    let server = Server::start(
        "[policy]\nrelay_domains = [\"example.test\"]\n[[list]]\naddress = \"team@example.test\"\nmembers = [\"a@one.test\"]\n",
    );
    let mut c = server.connect();
    c.greet();
    c.expect_cmd(
        "VRFY user@example.test",
        "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery",
    );
    c.expect_cmd("EXPN team@example.test", "502 5.5.1");
}

#[test]
fn expn_trusted_only() {
    let server = Server::start(
        "[policy]\nrelay_networks = [\"10.0.0.0/8\"]\nexpn = \"trusted\"\n[[list]]\naddress = \"team@example.test\"\nmembers = [\"a@one.test\"]\n",
    );
    let mut c = server.connect();
    c.greet();
    c.expect_cmd("EXPN team@example.test", "550 5.7.1");
}

#[test]
fn sequence_syntax_and_unknown() {
    let server = Server::start(&POLICY.replace("max_errors = 50", "max_errors = 7"));
    let mut c = server.connect();
    c.expect("220 ");
    c.expect_cmd("MAIL FROM:<a@b.test>", "503 5.5.1");
    c.expect_cmd("EHLO client.test", "250-");
    c.expect_cmd("RCPT TO:<x@example.test>", "503 5.5.1");
    c.expect_cmd("DATA", "503 5.5.1");
    c.expect_cmd("MAIL FROM:<a@b.test>", "250");
    c.expect_cmd("MAIL FROM:<a@b.test>", "503 5.5.1");
    c.expect_cmd("RSET", "250");
    c.expect_cmd("XYZZY", "500 5.5.1");
    c.expect_cmd("RSET", "250");
    c.expect_cmd("MAIL FROM:a@b.test", "501 5.1.7");
    // max_errors = 7: this is the seventh error.
    let r = c.cmd("MAIL FROM:<a@b.test> FOO=BAR");
    assert!(r.starts_with("555 5.5.4"), "{r}");
    c.expect("421 4.7.0");
    assert!(c.closed());
}

#[test]
fn bad_input_is_refused_and_the_session_goes_on() {
    let server = Server::start(POLICY);
    let mut c = server.connect();
    c.greet();
    c.send(b"NOOP\0X\r\n");
    c.expect("500 5.5.2");
    c.send(b"NOOP\rX\r\n");
    c.expect("500 5.5.2");
    c.send(b"RSET\n");
    c.expect("500 5.5.2");
    let mut long = vec![b'N'; 600];
    long.extend_from_slice(b"\r\n");
    c.send(&long);
    c.expect("500 5.5.2 Error: line too long");
    c.expect_cmd("NOOP", "250");
    c.expect_cmd("MAIL FROM:<pelé@b.test>", "553 5.6.7");
    c.expect_cmd("MAIL FROM:<pelé@b.test> SMTPUTF8", "250");
    c.expect_cmd("RCPT TO:<josé@example.test>", "250");
}

#[test]
fn size_limits_at_mail_and_at_end_of_data() {
    let server = Server::start(POLICY);
    let mut c = server.connect();
    c.greet();
    c.expect_cmd("MAIL FROM:<a@b.test> SIZE=5000", "552 5.3.4");
    let big = vec![b'x'; 3000];
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    body.extend_from_slice(&big);
    body.extend_from_slice(b"\r\n");
    let r = c.send_message("a@b.test", &["x@example.test"], &body);
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // The session is still usable.
    let r = c.send_message(
        "a@b.test",
        &["x@example.test"],
        b"Subject: small\r\n\r\nok\r\n",
    );
    queued_id(&r);
    assert_eq!(read_queue(&server.queue_dir()).len(), 1);
}

#[test]
fn lines_over_998_octets_are_refused() {
    let server = Server::start(POLICY);
    let mut c = server.connect();
    c.greet();
    let mut body = b"Subject: long\r\n\r\n".to_vec();
    body.extend_from_slice(&[b'x'; 999]);
    body.extend_from_slice(b"\r\n");
    let r = c.send_message("a@b.test", &["x@example.test"], &body);
    assert!(r.starts_with("550 5.6.0"), "{r}");
    let mut ok = b"Subject: long\r\n\r\n".to_vec();
    ok.extend_from_slice(&[b'x'; 998]);
    ok.extend_from_slice(b"\r\n");
    queued_id(&c.send_message("a@b.test", &["x@example.test"], &ok));
}

#[test]
fn too_many_hops_is_a_loop() {
    let server = Server::start(POLICY);
    let mut c = server.connect();
    c.greet();
    let body =
        b"Received: a\r\nReceived: b\r\nReceived: c\r\nReceived: d\r\nSubject: loop\r\n\r\nx\r\n";
    let r = c.send_message("a@b.test", &["x@example.test"], body);
    assert!(r.starts_with("554 5.4.6 Too many hops"), "{r}");
    let ok = b"Received: a\r\nReceived: b\r\nReceived: c\r\n\r\nx\r\n";
    queued_id(&c.send_message("a@b.test", &["x@example.test"], ok));
}

#[test]
fn every_smuggling_variant_is_refused() {
    let server = Server::start(POLICY);
    let mut c = server.connect();
    c.greet();
    for variant in [
        &b"\n.\n"[..],
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r\n.\n",
    ] {
        c.expect_cmd("MAIL FROM:<a@b.test>", "250");
        c.expect_cmd("RCPT TO:<x@example.test>", "250");
        c.expect_cmd("DATA", "354");
        let mut payload = b"Subject: smuggle\r\n\r\nhello".to_vec();
        payload.extend_from_slice(variant);
        payload.extend_from_slice(
            b"MAIL FROM:<evil@b.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nevil\r\n",
        );
        payload.extend_from_slice(b".\r\n");
        c.send(&payload);
        let r = c.reply();
        assert!(r.starts_with("550 5.6.0"), "{variant:?}: {r}");
    }
    c.expect_cmd("NOOP", "250");
    assert!(
        read_queue(&server.queue_dir()).is_empty(),
        "a smuggled message was queued"
    );
}

#[test]
fn bdat_chunks() {
    let server = Server::start(POLICY);
    let mut c = server.connect();
    c.greet();
    c.expect_cmd("MAIL FROM:<a@b.test>", "250");
    c.expect_cmd("RCPT TO:<x@example.test>", "250");
    c.send(b"BDAT 18\r\nSubject: chunk\r\n\r\n");
    c.expect("250 2.0.0 Ok: 18 octets");
    c.send(b"BDAT 7 LAST\r\n.body\r\n");
    let id = queued_id(&c.reply());
    c.expect_cmd("MAIL FROM:<a@b.test>", "250");
    c.expect_cmd("RCPT TO:<x@example.test>", "250");
    c.send(b"BDAT 11\r\nSubject: \r\n");
    c.expect("250");
    queued_id(&c.cmd("BDAT 0 LAST"));
    // BDAT without a transaction: the octets are read and dropped, then 503.
    c.send(b"BDAT 4 LAST\r\nRSET");
    c.expect("503 5.5.1");
    c.expect_cmd("NOOP", "250");
    let q = read_queue(&server.queue_dir());
    let m = q.iter().find(|m| m.id == id).expect("queued");
    assert_eq!(
        without_received(&m.content),
        b"Subject: chunk\r\n\r\n.body\r\n"
    );
    assert_eq!(q.len(), 2);
}

#[test]
fn connection_limit_per_ip() {
    let server = Server::start("[server]\nmax_connections_per_ip = 2\n[tuning]\nshards = 1\n");
    let mut a = server.connect();
    a.expect("220 ");
    let mut b = server.connect();
    b.expect("220 ");
    let mut c = server.connect();
    c.expect("421 4.7.0");
    assert!(c.closed());
    drop(a);
    std::thread::sleep(Duration::from_millis(200));
    let mut d = server.connect();
    d.expect("220 ");
    b.expect_cmd("QUIT", "221");
}

#[test]
fn idle_timeout() {
    let server = Server::start("[server]\ncommand_timeout = \"500ms\"\n");
    let mut c = server.connect();
    c.expect("220 ");
    c.expect("421 4.4.2");
    assert!(c.closed());
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let mut server = Server::start("[server]\nshutdown_grace = \"1s\"\n[tuning]\nshards = 1\n");
    let mut idle = server.connect();
    idle.greet();
    let mut busy = server.connect();
    busy.greet();
    busy.expect_cmd("MAIL FROM:<a@b.test>", "250");
    let status = {
        let pid = server.child.as_ref().unwrap().id() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        // The idle session is told at once; the one in a transaction may still finish.
        idle.expect("421 4.3.2");
        busy.expect_cmd("RCPT TO:<x@example.test>", "250");
        busy.expect_cmd("DATA", "354");
        busy.send(b"Subject: during drain\r\n\r\nx\r\n.\r\n");
        queued_id(&busy.reply());
        busy.expect("421 4.3.2");
        server.terminate()
    };
    assert!(
        status.success(),
        "exit status {status:?}: {}",
        server.stderr()
    );
    assert_eq!(read_queue(&server.queue_dir()).len(), 1);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", server.port)).is_err(),
        "still listening"
    );
}

#[test]
fn messages_survive_restart() {
    let mut server = Server::start("");
    let mut ids = Vec::new();
    let mut c = server.connect();
    c.greet();
    for i in 0..20 {
        let body = format!("Subject: {i}\r\n\r\nbody {i}\r\n");
        ids.push(queued_id(&c.send_message(
            "a@b.test",
            &["x@relay.test"],
            body.as_bytes(),
        )));
    }
    drop(c);
    server.kill9();
    server.restart();
    // One connection lives on one shard: that shard recovers all 20.
    assert!(
        server.stderr().contains("recovered 20 live messages"),
        "{}",
        server.stderr()
    );
    let q = read_queue(&server.queue_dir());
    let mut got: Vec<String> = q.iter().map(|m| m.id.clone()).collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    // New ids after the restart do not collide with recovered ones.
    let mut c = server.connect();
    c.greet();
    let new = queued_id(&c.send_message("a@b.test", &["x@relay.test"], b"\r\nafter\r\n"));
    assert!(!ids.contains(&new));
}
