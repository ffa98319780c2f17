//! TLS and AUTH with the real binary: STARTTLS, implicit TLS, command injection after
//! STARTTLS, AUTH PLAIN/LOGIN, submission, and the outbound `required` TLS policy.

mod common;

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

/// A test CA and a certificate it signed for `names`, written as PEM files.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    ca_der: CertificateDer<'static>,
}

fn pki(dir: &Path, names: &[&str]) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ringpost test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
    let p = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        ca_der: ca_cert.der().clone(),
    };
    std::fs::write(&p.ca, ca_cert.pem()).unwrap();
    std::fs::write(&p.cert, format!("{}{}", leaf.pem(), ca_cert.pem())).unwrap();
    std::fs::write(&p.key, leaf_key.serialize_pem()).unwrap();
    p
}

fn client_config(ca: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A blocking SMTP conversation over TLS (rustls over a std socket).
struct Tls {
    s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    pending: Vec<u8>,
}

impl Tls {
    fn wrap(tcp: TcpStream, ca: &CertificateDer<'static>) -> Tls {
        let conn = rustls::ClientConnection::new(
            client_config(ca),
            ServerName::try_from("relay.test").unwrap(),
        )
        .unwrap();
        Tls {
            s: rustls::StreamOwned::new(conn, tcp),
            pending: Vec::new(),
        }
    }

    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            while !self.pending.contains(&b'\n') {
                let mut b = [0u8; 4096];
                let n = self.s.read(&mut b).expect("read over TLS");
                assert!(n > 0, "closed; so far {all:?}");
                self.pending.extend_from_slice(&b[..n]);
            }
            let lf = self.pending.iter().position(|&b| b == b'\n').unwrap();
            let line: Vec<u8> = self.pending.drain(..=lf).collect();
            let line = String::from_utf8_lossy(&line).into_owned();
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.s.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        self.s.flush().unwrap();
        self.reply()
    }

    fn expect(&mut self, line: &str, prefix: &str) -> String {
        let r = self.cmd(line);
        assert!(
            r.starts_with(prefix),
            "{line}: expected {prefix}, got {r:?}"
        );
        r
    }
}

/// Connects, greets, STARTTLS, and returns the TLS conversation (before the new EHLO).
fn starttls(port: u16, ca: &CertificateDer<'static>, injected: &[u8]) -> Tls {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut r = BufReader::new(tcp.try_clone().unwrap());
    let mut w = tcp.try_clone().unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("220 "), "{line}");
    w.write_all(b"EHLO client.test\r\n").unwrap();
    let mut ehlo = String::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        ehlo.push_str(&l);
        if l.as_bytes().get(3) == Some(&b' ') {
            break;
        }
    }
    assert!(ehlo.contains("250-STARTTLS"), "{ehlo}");
    let mut cmd = b"STARTTLS\r\n".to_vec();
    cmd.extend_from_slice(injected);
    w.write_all(&cmd).unwrap();
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    assert!(l.starts_with("220 2.0.0"), "{l}");
    assert!(r.buffer().is_empty());
    Tls::wrap(tcp, ca)
}

fn tls_config(p: &Pki) -> String {
    format!(
        "[server]\nhostname = \"relay.test\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        p.cert.display(),
        p.key.display()
    )
}

#[test]
fn starttls_round_trip_and_trace_header() {
    let dir = TempDir::new("tls");
    let p = pki(&dir.0, &["relay.test"]);
    let server = Server::start(&tls_config(&p));
    let mut t = starttls(server.port, &p.ca_der, b"");
    let ehlo = t.expect("EHLO client.test", "250-");
    assert!(!ehlo.contains("STARTTLS"), "STARTTLS offered again: {ehlo}");
    t.expect("MAIL FROM:<a@b.test>", "250");
    t.expect("RCPT TO:<x@relay.test>", "250");
    t.expect("DATA", "354");
    let id = queued_id(&t.cmd("Subject: over tls\r\n\r\nsecret\r\n."));
    let q = read_queue(&server.queue_dir());
    let m = q.iter().find(|m| m.id == id).unwrap();
    let received = String::from_utf8_lossy(&m.content);
    assert!(
        received.contains("with ESMTPS id") && received.contains("(using TLSv1_3"),
        "{received}"
    );
}

#[test]
fn commands_injected_after_starttls_are_discarded() {
    let dir = TempDir::new("tls");
    let p = pki(&dir.0, &["relay.test"]);
    let server = Server::start(&tls_config(&p));
    let mut t = starttls(server.port, &p.ca_der, b"MAIL FROM:<evil@b.test>\r\n");
    t.expect("EHLO client.test", "250-");
    // Had the injected MAIL been acted on, this RCPT would be accepted.
    t.expect("RCPT TO:<x@relay.test>", "503 5.5.1");
    server.wait_log("after STARTTLS; discarded");
}

#[test]
fn implicit_tls_listener() {
    let dir = TempDir::new("tls");
    let p = pki(&dir.0, &["relay.test"]);
    let port = free_port();
    let server = Server::start(&format!(
        "{}[[listen]]\naddr = \"127.0.0.1:{port}\"\nkind = \"smtps\"\n",
        tls_config(&p)
    ));
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut t = Tls::wrap(tcp, &p.ca_der);
    assert!(t.reply().starts_with("220 relay.test"));
    let ehlo = t.expect("EHLO client.test", "250-");
    assert!(!ehlo.contains("STARTTLS"));
    drop(server);
}

fn add_user(file: &Path, name: &str, password: &str) {
    let mut child = Command::new(binary())
        .args(["user", "add", name, "--users-file"])
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn auth_on_submission_and_relay_permission() {
    use base64::Engine as _;
    let dir = TempDir::new("auth");
    let p = pki(&dir.0, &["relay.test"]);
    let users = dir.0.join("users");
    add_user(&users, "alice", "s3cret");
    add_user(&users, "bob", "other");
    let listed = Command::new(binary())
        .args(["user", "list", "--users-file"])
        .arg(&users)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "alice\nbob\n");
    assert!(
        !std::fs::read_to_string(&users).unwrap().contains("s3cret"),
        "passwords are hashed"
    );
    let sub = free_port();
    let server = Server::start(&format!(
        "{}[policy]\nrelay_networks = []\n[tuning]\nshards = 1\n[auth]\nusers_file = \"{}\"\nfailures_max = 3\n[[listen]]\naddr = \"127.0.0.1:{sub}\"\nkind = \"submission\"\n",
        tls_config(&p),
        users.display()
    ));
    // Plain text on the smtp listener: AUTH is not offered and refused.
    let mut c = server.connect();
    c.greet();
    c.expect_cmd("AUTH PLAIN AGFsaWNlAHMzY3JldA==", "538 5.7.11");
    // Submission: AUTH over TLS, then relaying anywhere.
    let mut t = starttls(sub, &p.ca_der, b"");
    let ehlo = t.expect("EHLO client.test", "250-");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    t.expect("MAIL FROM:<alice@b.test>", "530 5.7.0");
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    t.expect(
        &format!("AUTH PLAIN {}", b64(b"\0alice\0wrong")),
        "535 5.7.8",
    );
    t.expect("AUTH LOGIN", "334 VXNlcm5hbWU6");
    t.expect(&b64(b"alice"), "334 UGFzc3dvcmQ6");
    t.expect(&b64(b"s3cret"), "235 2.7.0");
    t.expect("MAIL FROM:<alice@b.test>", "250");
    t.expect("RCPT TO:<anyone@elsewhere.test>", "250");
    t.expect("DATA", "354");
    let id = queued_id(&t.cmd("Subject: submitted\r\n\r\nx\r\n."));
    let q = read_queue(&server.queue_dir());
    let received =
        String::from_utf8_lossy(&q.iter().find(|m| m.id == id).unwrap().content).into_owned();
    assert!(received.contains("with ESMTPSA"), "{received}");
    // The failure limit per client IP (counted per shard: one shard here).
    let mut t = starttls(sub, &p.ca_der, b"");
    t.expect("EHLO client.test", "250-");
    // (alice's success above cleared this IP's earlier failure)
    for _ in 0..3 {
        t.expect(&format!("AUTH PLAIN {}", b64(b"\0bob\0nope")), "535 5.7.8");
    }
    t.expect(&format!("AUTH PLAIN {}", b64(b"\0bob\0other")), "454 4.7.0");
}

#[test]
fn missing_certificate_is_a_startup_error() {
    let out = run_with_config("serve", "[[listen]]\naddr = \"127.0.0.1:2525\"\n[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/cert.pem"));
}

#[test]
fn required_outbound_tls_defers_on_plain_and_delivers_when_verified() {
    let dir = TempDir::new("tlsout");
    let p = pki(&dir.0, &["mx.sink.test"]);
    let policy = "[server]\nhostname = \"relay.test\"\n[policy]\nrelay_domains = [\"sink.test\"]\n";
    let plain = Relay::start("", policy, "tls = \"required\"\n", &["--no-tls"]);
    let mut c = plain.server.connect();
    c.greet();
    queued_id(&c.send_message(
        "s@sender.test",
        &["x@sink.test"],
        b"Subject: must be tls\r\n\r\nx\r\n",
    ));
    plain.server.wait_log("4.7.4");
    assert_eq!(plain.sink_stats()["messages"], 0);
    let ca = format!("tls = \"required\"\ntls_ca_file = \"{}\"\n", p.ca.display());
    let cert = p.cert.display().to_string();
    let key = p.key.display().to_string();
    let tls = Relay::start("", policy, &ca, &["--cert", &cert, "--key", &key]);
    let mut c = tls.server.connect();
    c.greet();
    queued_id(&c.send_message(
        "s@sender.test",
        &["y@sink.test"],
        b"Subject: verified\r\n\r\nx\r\n",
    ));
    let (env, _) = tls.wait_for("y@sink.test");
    assert_eq!(env["tls"], true);
}

#[test]
fn sighup_reloads_the_certificate_without_dropping_sessions() {
    let dir = TempDir::new("tls");
    let old = pki(&dir.0.join("."), &["relay.test"]);
    let server = Server::start(&tls_config(&old));
    let mut before = starttls(server.port, &old.ca_der, b"");
    before.expect("EHLO client.test", "250-");
    // A new CA and certificate replace the files; SIGHUP makes the relay read them.
    let newdir = TempDir::new("tls-new");
    let new = pki(&newdir.0, &["relay.test"]);
    std::fs::copy(&new.cert, &old.cert).unwrap();
    std::fs::copy(&new.key, &old.key).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.child.as_ref().unwrap().id() as i32, libc::SIGHUP) };
    server.wait_log("TLS certificate reloaded");
    let mut after = starttls(server.port, &new.ca_der, b"");
    after.expect("EHLO client.test", "250-");
    // The session from before the reload is still there.
    before.expect("NOOP", "250");
}

#[test]
fn auth_in_the_clear_only_for_loopback_when_allowed() {
    use base64::Engine as _;
    let dir = TempDir::new("auth");
    let users = dir.0.join("users");
    add_user(&users, "carol", "pw");
    let server = Server::start(&format!(
        "[auth]\nusers_file = \"{}\"\nallow_plaintext_loopback = true\n",
        users.display()
    ));
    let mut c = server.connect();
    c.expect("220 ");
    let ehlo = c.cmd("EHLO client.test");
    assert!(
        ehlo.contains("250-AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(b"\0carol\0pw");
    c.expect_cmd(&format!("AUTH PLAIN {b64}"), "235 2.7.0");
    c.expect_cmd("AUTH PLAIN {b64}", "503 5.5.1");
}
