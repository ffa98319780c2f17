//! Property tests of the pure SMTP layer: the parser never panics, the session resyncs
//! after any garbage, and splitting input anywhere changes nothing.

use proptest::prelude::*;
use ringpost::config::Config;
use ringpost::smtp::data::DataScanner;
use ringpost::smtp::parser;
use ringpost::smtp::session::{Event, Session, SessionConfig};

fn session_config() -> SessionConfig {
    let c = Config::parse(
        "[[listen]]\naddr = \"127.0.0.1:2525\"\n[server]\nmax_errors = 1000000\n[policy]\nrelay_domains = [\"example.test\"]\n",
        "props",
    )
    .expect("config");
    SessionConfig::from_config(&c)
}

/// Feeds `input` in pieces cut at `cuts`, the way reads would deliver it, and stores every
/// message at once. Returns all reply bytes.
fn run(cfg: &SessionConfig, input: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut s = Session::new(cfg, "127.0.0.1".parse().expect("ip"));
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(input.len());
    points.sort_unstable();
    let mut from = 0;
    for to in points {
        buf.extend_from_slice(&input[from..to]);
        from = to;
        loop {
            let (used, ev) = s.feed(&buf, &mut out);
            buf.drain(..used);
            match ev {
                Event::Message => s.stored(Ok("0000000000000001"), &mut out),
                Event::Etrn => {}
                // Neither TLS nor AUTH is configured here: the session never pauses for them.
                Event::StartTls | Event::Auth => unreachable!("not configured"),
                Event::NeedInput => break,
                Event::Close => return out,
            }
        }
    }
    out
}

fn last_reply(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    text.trim_end()
        .rsplit("\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parser_never_panics(line in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parser::parse_command(&line);
        let _ = parser::frame(&line, 512);
    }

    #[test]
    fn parser_never_panics_on_command_shapes(
        verb in prop::sample::select(vec!["MAIL FROM:", "RCPT TO:", "EHLO ", "BDAT ", "VRFY ", "ETRN ", "mail from: "]),
        rest in "[<>@.\"\\\\: =a-zA-Z0-9\\[\\]+,;-]{0,80}",
    ) {
        let line = format!("{verb}{rest}");
        let _ = parser::parse_command(line.as_bytes());
    }

    #[test]
    fn session_resyncs_after_garbage(garbage in proptest::collection::vec(any::<u8>().prop_filter("no LF", |b| *b != b'\n'), 0..2000)) {
        let cfg = session_config();
        let mut input = b"EHLO client.test\r\nX".to_vec();
        input.extend_from_slice(&garbage);
        input.extend_from_slice(b"\r\nNOOP\r\n");
        let out = run(&cfg, &input, &[]);
        prop_assert_eq!(last_reply(&out), "250 2.0.0 Ok");
    }

    #[test]
    fn splitting_input_changes_nothing(
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        body_lines in proptest::collection::vec("[ -~]{0,100}", 0..30),
    ) {
        let cfg = session_config();
        let mut body = String::new();
        for l in &body_lines {
            body.push_str(l);
            body.push_str("\r\n");
        }
        let mut input = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n".to_vec();
        for line in body.split_inclusive("\r\n") {
            if line.starts_with('.') {
                input.push(b'.');
            }
            input.extend_from_slice(line.as_bytes());
        }
        input.extend_from_slice(b".\r\nBDAT 3 LAST\r\nxyzNOOP\r\nQUIT\r\n");
        let whole = run(&cfg, &input, &[]);
        let split = run(&cfg, &input, &cuts);
        prop_assert_eq!(&whole, &split);
        prop_assert!(String::from_utf8_lossy(&whole).contains("250 2.0.0 Ok: queued as"));
    }

    #[test]
    fn data_scanner_round_trips_clean_content(
        lines in proptest::collection::vec("[ -~]{0,120}", 0..40),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut body = Vec::new();
        for l in &lines {
            body.extend_from_slice(l.as_bytes());
            body.extend_from_slice(b"\r\n");
        }
        let mut wire = Vec::new();
        let mut at_start = true;
        for &b in &body {
            if at_start && b == b'.' {
                wire.push(b'.');
            }
            wire.push(b);
            at_start = b == b'\n';
        }
        wire.extend_from_slice(b".\r\n");
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut scanner = DataScanner::new(u64::MAX);
        let mut out = Vec::new();
        let mut from = 0;
        let mut end = None;
        for to in points {
            while from < to && end.is_none() {
                let (used, e) = scanner.feed(&wire[from..to], &mut out);
                from += used;
                end = e;
            }
        }
        let end = end.expect("end of data found");
        prop_assert!(!end.bare_newline);
        prop_assert_eq!(out, body);
    }
}
