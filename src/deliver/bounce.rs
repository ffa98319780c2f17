//! Delivery status notifications (RFC 3464): a multipart/report with a human-readable
//! part, a message/delivery-status part (per-message and per-recipient fields) and the
//! original headers (or, with RET=FULL, the whole message). Built directly in the queue's
//! wire form (dot-stuffed), like every stored message.

use crate::smtp::parser::Ret;
use std::fmt::Write as _;

/// One recipient the notification is about.
pub struct DsnRcpt<'a> {
    pub address: &'a str,
    pub orcpt: Option<&'a str>,
    /// "failed" or "delayed".
    pub action: &'static str,
    /// RFC 3463 status, e.g. "5.1.1".
    pub status: String,
    pub diagnostic: &'a str,
    pub remote: Option<&'a str>,
}

pub struct Dsn<'a> {
    pub hostname: &'a str,
    pub queue_id: &'a str,
    pub envid: Option<&'a str>,
    pub arrival_secs: u64,
    pub now_secs: u64,
    pub sender: &'a str,
    pub ret: Option<Ret>,
    pub rcpts: Vec<DsnRcpt<'a>>,
    /// The original message in wire form (our Received header first).
    pub original: &'a [u8],
}

/// The status for a reply text: its enhanced code, or one derived from the basic code.
pub fn status_of(reply: &str, permanent: bool) -> String {
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or_default();
    if let Some(e) = words.next() {
        let parts: Vec<&str> = e.split('.').collect();
        if parts.len() == 3
            && matches!(parts[0], "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            return e.to_string();
        }
    }
    match (code.as_bytes().first(), permanent) {
        (Some(b'4'), _) | (_, false) => "4.0.0".into(),
        _ => "5.0.0".into(),
    }
}

/// Lines of a DSN text must not start with "." in wire form; none of ours do, but a
/// remote reply could: stuff it.
fn safe(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

pub fn build(d: &Dsn<'_>) -> Vec<u8> {
    let boundary = format!("{}.{}/{}", d.queue_id, d.now_secs, d.hostname);
    let delayed = d.rcpts.iter().all(|r| r.action == "delayed");
    let relayed = d.rcpts.iter().all(|r| r.action == "relayed");
    let subject = if relayed {
        "Successful Mail Delivery Report"
    } else if delayed {
        "Delayed Mail (still being retried)"
    } else {
        "Undelivered Mail Returned to Sender"
    };
    let mut s = String::with_capacity(2048);
    let _ = write!(
        s,
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
         To: <{sender}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.{now}.dsn@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         This is the mail system at host {host}.\r\n\
         \r\n",
        host = d.hostname,
        sender = d.sender,
        date = crate::time::rfc5322(d.now_secs),
        id = d.queue_id,
        now = d.now_secs,
    );
    if relayed {
        s.push_str("Your message was relayed to the recipients below; the next system does not\r\nreport delivery status, so this is the last notice you will receive.\r\n\r\n");
    } else if delayed {
        s.push_str("Your message could not be delivered yet to the recipients below. The mail\r\nsystem will keep trying; you need not send it again.\r\n\r\n");
    } else {
        s.push_str("I'm sorry to have to inform you that your message could not be delivered\r\nto one or more recipients. It's attached below.\r\n\r\n");
    }
    for r in &d.rcpts {
        let _ = write!(s, "<{}>: {}\r\n", r.address, safe(r.diagnostic));
    }
    let _ = write!(
        s,
        "\r\n--{boundary}\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {host}\r\n\
         X-Ringpost-Queue-ID: {id}\r\n",
        host = d.hostname,
        id = d.queue_id
    );
    if let Some(envid) = d.envid {
        let _ = write!(s, "Original-Envelope-Id: {envid}\r\n");
    }
    let _ = write!(
        s,
        "Arrival-Date: {}\r\n",
        crate::time::rfc5322(d.arrival_secs)
    );
    for r in &d.rcpts {
        let _ = write!(s, "\r\nFinal-Recipient: rfc822; {}\r\n", r.address);
        if let Some(o) = r.orcpt {
            let _ = write!(s, "Original-Recipient: {}\r\n", o.replacen(';', "; ", 1));
        }
        let _ = write!(s, "Action: {}\r\nStatus: {}\r\n", r.action, r.status);
        if let Some(m) = r.remote {
            let host = m.split('[').next().unwrap_or(m);
            let _ = write!(s, "Remote-MTA: dns; {host}\r\n");
        }
        let _ = write!(s, "Diagnostic-Code: smtp; {}\r\n", safe(r.diagnostic));
        if r.action == "delayed" {
            let _ = write!(s, "Will-Retry-Until: (see the queue's max_age)\r\n");
        }
    }
    let full = d.ret == Some(Ret::Full);
    let _ = write!(
        s,
        "\r\n--{boundary}\r\n\
         Content-Description: {}\r\n\
         Content-Type: {}\r\n\
         \r\n",
        if full {
            "Undelivered Message"
        } else {
            "Undelivered Message Headers"
        },
        if full {
            "message/rfc822"
        } else {
            "text/rfc822-headers"
        },
    );
    let mut out = s.into_bytes();
    let original = if full {
        d.original
    } else {
        let end =
            memchr::memmem::find(d.original, b"\r\n\r\n").map_or(d.original.len(), |at| at + 2);
        &d.original[..end]
    };
    out.extend_from_slice(original);
    if !original.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_report() {
        let original = b"Received: from x\r\n\tby y\r\nSubject: hello\r\n\r\n..dotted body\r\n";
        let d = Dsn {
            hostname: "relay.test",
            queue_id: "0000000000000001",
            envid: Some("ENV1"),
            arrival_secs: 0,
            now_secs: 60,
            sender: "a@b.test",
            ret: None,
            rcpts: vec![DsnRcpt {
                address: "c@d.test",
                orcpt: Some("rfc822;c@d.test"),
                action: "failed",
                status: status_of("550 5.1.1 no such user", true),
                diagnostic: "550 5.1.1 no such user",
                remote: Some("mx.d.test[192.0.2.1]"),
            }],
            original,
        };
        let text = String::from_utf8(build(&d)).unwrap();
        for want in [
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Reporting-MTA: dns; relay.test",
            "Original-Envelope-Id: ENV1",
            "Final-Recipient: rfc822; c@d.test",
            "Original-Recipient: rfc822; c@d.test",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; mx.d.test",
            "Diagnostic-Code: smtp; 550 5.1.1 no such user",
            "Content-Type: text/rfc822-headers",
            "Subject: hello",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        assert!(!text.contains("dotted body"), "headers only by default");
        assert!(text.ends_with("--\r\n"));
        let full = Dsn {
            ret: Some(Ret::Full),
            ..d
        };
        assert!(
            String::from_utf8(build(&full))
                .unwrap()
                .contains("..dotted body"),
            "wire form kept"
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(status_of("550 5.1.1 x", true), "5.1.1");
        assert_eq!(status_of("550 no such user", true), "5.0.0");
        assert_eq!(status_of("451 try later", false), "4.0.0");
        assert_eq!(status_of("451 4.4.1 no route", false), "4.4.1");
    }
}
