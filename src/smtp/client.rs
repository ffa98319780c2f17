//! The outbound SMTP/LMTP client, without I/O: what to send for a transaction, what the
//! replies mean, and one place where every delivery result is classified.

use super::parser::{notify, Ret};

/// What the next hop said it supports (RFC 5321 4.1.1.1 EHLO keywords).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub esmtp: bool,
    pub pipelining: bool,
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    pub starttls: bool,
    pub chunking: bool,
}

impl Capabilities {
    /// From the lines of a 250 EHLO reply (the first is the greeting line).
    pub fn from_ehlo(lines: &[String]) -> Capabilities {
        let mut c = Capabilities {
            esmtp: true,
            ..Capabilities::default()
        };
        for line in lines.iter().skip(1) {
            let kw = line.get(4..).unwrap_or_default();
            let mut words = kw.split_whitespace();
            let Some(word) = words.next() else { continue };
            match word.to_ascii_uppercase().as_str() {
                "PIPELINING" => c.pipelining = true,
                "SIZE" => c.size = words.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0),
                "8BITMIME" => c.eight_bit_mime = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "DSN" => c.dsn = true,
                "STARTTLS" => c.starttls = true,
                "CHUNKING" => c.chunking = true,
                _ => {}
            }
        }
        c
    }
}

/// A reply from the next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// All lines, without CRLF, joined with a space after the first code.
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, lines: &[String]) -> Reply {
        let text = lines
            .iter()
            .map(|l| l.get(4..).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" ");
        Reply { code, text }
    }

    pub fn is_ok(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The enhanced status code (RFC 3463) at the start of the text, if any.
    pub fn enhanced(&self) -> Option<&str> {
        let word = self.text.split_whitespace().next()?;
        let parts: Vec<&str> = word.split('.').collect();
        let ok = parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then_some(word)
    }
}

/// The reply as one line: code and text.
impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// How a recipient's delivery attempt ended. The one classification of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Delivered,
    /// Try again later.
    Deferred,
    /// Give up: bounce.
    Failed,
}

/// Why an attempt ended without a usable reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No host of the site accepted a connection or greeted with 2xx.
    Unreachable(String),
    /// The connection broke or timed out in the middle of a transaction.
    Lost(String),
    /// The queue could not read the message.
    Queue(String),
    /// The next hop cannot take this message: no SMTPUTF8, too big for its SIZE.
    Refused(String),
}

impl Disposition {
    /// 2xx delivered, 4xx deferred, 5xx failed; anything else is a protocol error, which
    /// is temporary (the next attempt may reach a saner host).
    pub fn of_code(code: u16) -> Disposition {
        match code {
            200..=299 => Disposition::Delivered,
            500..=599 => Disposition::Failed,
            _ => Disposition::Deferred,
        }
    }

    pub fn of_failure(f: &Failure) -> Disposition {
        match f {
            Failure::Unreachable(_) | Failure::Lost(_) | Failure::Queue(_) => Disposition::Deferred,
            Failure::Refused(_) => Disposition::Failed,
        }
    }
}

impl Failure {
    pub fn text(&self) -> &str {
        match self {
            Failure::Unreachable(t)
            | Failure::Lost(t)
            | Failure::Queue(t)
            | Failure::Refused(t) => t,
        }
    }
}

/// The envelope of one outbound transaction.
#[derive(Debug, Clone)]
pub struct OutEnvelope<'a> {
    pub sender: &'a str,
    pub smtputf8: bool,
    pub eight_bit: bool,
    pub ret: Option<Ret>,
    pub envid: Option<&'a str>,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct OutRcpt<'a> {
    pub address: &'a str,
    pub notify: Option<u8>,
    pub orcpt: Option<&'a str>,
}

/// Whether the next hop can take the message at all.
pub fn precheck(env: &OutEnvelope<'_>, caps: &Capabilities) -> Result<(), Failure> {
    if env.smtputf8 && !caps.smtputf8 {
        return Err(Failure::Refused(
            "553 5.6.7 the next hop does not support SMTPUTF8 and the message needs it".into(),
        ));
    }
    if let Some(max) = caps.size {
        if env.size > max {
            return Err(Failure::Refused(format!(
                "552 5.3.4 message size {} exceeds the next hop's limit {max}",
                env.size
            )));
        }
    }
    Ok(())
}

/// Appends the MAIL command to `out` (straight into the write buffer: no String).
pub fn mail_command(env: &OutEnvelope<'_>, caps: &Capabilities, out: &mut Vec<u8>) {
    push(out, &["MAIL FROM:<", env.sender, ">"]);
    if caps.esmtp {
        if caps.size.is_some() {
            let _ = std::io::Write::write_fmt(out, format_args!(" SIZE={}", env.size));
        }
        if env.eight_bit && caps.eight_bit_mime {
            out.extend_from_slice(b" BODY=8BITMIME");
        }
        if env.smtputf8 {
            out.extend_from_slice(b" SMTPUTF8");
        }
        if caps.dsn {
            match env.ret {
                Some(Ret::Full) => out.extend_from_slice(b" RET=FULL"),
                Some(Ret::Hdrs) => out.extend_from_slice(b" RET=HDRS"),
                None => {}
            }
            if let Some(envid) = env.envid {
                push(out, &[" ENVID=", envid]);
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn push(out: &mut Vec<u8>, parts: &[&str]) {
    for p in parts {
        out.extend_from_slice(p.as_bytes());
    }
}

/// Appends one RCPT command to `out`.
pub fn rcpt_command(r: &OutRcpt<'_>, caps: &Capabilities, out: &mut Vec<u8>) {
    push(out, &["RCPT TO:<", r.address, ">"]);
    if caps.dsn {
        if let Some(n) = r.notify {
            out.extend_from_slice(b" NOTIFY=");
            if n & notify::NEVER != 0 {
                out.extend_from_slice(b"NEVER");
            } else {
                let mut sep = "";
                for (bit, w) in [
                    (notify::SUCCESS, "SUCCESS"),
                    (notify::FAILURE, "FAILURE"),
                    (notify::DELAY, "DELAY"),
                ] {
                    if n & bit != 0 {
                        push(out, &[sep, w]);
                        sep = ",";
                    }
                }
            }
        }
        if let Some(o) = r.orcpt {
            push(out, &[" ORCPT=", o]);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// What the caller does next in a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Read another reply (pipelined commands are already sent).
    Read,
    /// Lock-step: send RCPT number i now, then read.
    SendRcpt(usize),
    /// Lock-step: send DATA now, then read.
    SendData,
    /// Send the content and the final ".", then read.
    SendContent,
    /// 354 came although no recipient was accepted: send an empty body ("."), read one reply.
    SendEmpty,
    /// The transaction is over; if it did not complete, send RSET before the next one.
    Done { clean: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Mail,
    Rcpt(usize),
    Data,
    /// BDAT: the reply to the one chunk, which came with the envelope.
    Chunk,
    Empty,
    Final(usize),
    Done,
}

/// The replies of one transaction, fed in order, and what they mean per recipient.
#[derive(Debug, Clone)]
pub struct Transaction {
    rcpts: usize,
    pipelined: bool,
    lmtp: bool,
    /// The content went out as one `BDAT n LAST` chunk right behind the envelope.
    chunked: bool,
    stage: Stage,
    mail: Option<Reply>,
    rcpt_replies: Vec<Reply>,
    data: Option<Reply>,
    finals: Vec<Reply>,
}

impl Transaction {
    /// With `pipelined`, the caller has sent MAIL, every RCPT and DATA at once.
    pub fn new(rcpts: usize, pipelined: bool, lmtp: bool) -> Transaction {
        Transaction {
            rcpts,
            pipelined,
            lmtp,
            chunked: false,
            stage: Stage::Mail,
            mail: None,
            rcpt_replies: Vec::new(),
            data: None,
            finals: Vec::new(),
        }
    }

    /// CHUNKING (RFC 3030) with PIPELINING: the caller has sent MAIL, every RCPT and
    /// `BDAT n LAST` with the whole content at once; the replies are those of MAIL, each
    /// RCPT and the chunk. SMTP only (LMTP keeps DATA and its reply per recipient).
    pub fn chunked(rcpts: usize) -> Transaction {
        Transaction {
            chunked: true,
            ..Transaction::new(rcpts, true, false)
        }
    }

    /// A chunked transaction whose BDAT the next hop refused as a command (500-504) after
    /// accepting its envelope: it offers CHUNKING without implementing it. The message
    /// was not taken, and the session is out of step (the chunk may be read as commands).
    /// The refusal, if so.
    pub fn chunk_not_implemented(&self) -> Option<&Reply> {
        let usable = self.taken();
        if !(self.chunked && usable) {
            return None;
        }
        self.finals
            .first()
            .filter(|r| (500..=504).contains(&r.code))
    }

    /// The next hop took MAIL and at least one RCPT: there is a transaction for content.
    fn taken(&self) -> bool {
        self.mail.as_ref().is_some_and(Reply::is_ok) && self.accepted() > 0
    }

    fn accepted(&self) -> usize {
        self.rcpt_replies.iter().filter(|r| r.is_ok()).count()
    }

    /// No reply came yet: the next hop has not seen (or acted on) this transaction.
    pub fn untouched(&self) -> bool {
        self.stage == Stage::Mail
    }

    pub fn on_reply(&mut self, r: Reply) -> Step {
        match self.stage {
            Stage::Mail => {
                let ok = r.is_ok();
                self.mail = Some(r);
                self.stage = Stage::Rcpt(0);
                match (self.pipelined, ok) {
                    (true, _) => Step::Read,
                    (false, true) => Step::SendRcpt(0),
                    (false, false) => self.done(false),
                }
            }
            Stage::Rcpt(i) => {
                self.rcpt_replies.push(r);
                if i + 1 < self.rcpts {
                    self.stage = Stage::Rcpt(i + 1);
                    return if self.pipelined {
                        Step::Read
                    } else {
                        Step::SendRcpt(i + 1)
                    };
                }
                if self.chunked {
                    self.stage = Stage::Chunk;
                    return Step::Read;
                }
                self.stage = Stage::Data;
                match (self.pipelined, self.accepted() > 0) {
                    (true, _) => Step::Read,
                    (false, true) => Step::SendData,
                    (false, false) => self.done(false),
                }
            }
            Stage::Data => {
                let go = r.code == 354;
                self.data = Some(r);
                let usable = self.taken();
                match (go, usable) {
                    (true, true) => {
                        self.stage = Stage::Final(0);
                        Step::SendContent
                    }
                    (true, false) => {
                        self.stage = Stage::Empty;
                        Step::SendEmpty
                    }
                    (false, _) => self.done(false),
                }
            }
            Stage::Chunk => {
                // Without a transaction (MAIL or every RCPT refused) the reply refuses
                // the chunk, which the server read and dropped; either way the
                // transaction is over. A server that kept a half transaction after a
                // refused chunk gets RSET before the next (RFC 3030 4.2).
                let usable = self.taken();
                let ok = r.is_ok();
                if usable {
                    self.finals.push(r);
                }
                self.done(usable && ok)
            }
            Stage::Empty => self.done(true),
            Stage::Final(i) => {
                self.finals.push(r);
                if self.lmtp && i + 1 < self.accepted() {
                    self.stage = Stage::Final(i + 1);
                    return Step::Read;
                }
                self.done(true)
            }
            Stage::Done => Step::Done { clean: true },
        }
    }

    fn done(&mut self, clean: bool) -> Step {
        self.stage = Stage::Done;
        Step::Done { clean }
    }

    /// Per recipient: its disposition and the reply that decided it. Recipients without a
    /// deciding reply (the connection broke) get `lost`.
    pub fn results(&self, lost: &Failure) -> Vec<(Disposition, String)> {
        let after = |r: &Reply, to: &str| {
            (
                Disposition::of_code(r.code),
                format!("{r} (in reply to {to})"),
            )
        };
        let lost = || (Disposition::of_failure(lost), lost.text().to_string());
        // A reply to the whole transaction decides every recipient alike: its text is
        // formatted once, copied for each recipient but the last, which takes it.
        let mut mail = self
            .mail
            .as_ref()
            .filter(|m| !m.is_ok())
            .map(|m| after(m, "MAIL FROM"));
        let mut refused = self
            .data
            .as_ref()
            .filter(|d| d.code != 354)
            .map(|d| after(d, "DATA"));
        let content_end = if self.chunked {
            "BDAT LAST"
        } else {
            "end of data"
        };
        let mut final_reply = if self.lmtp {
            None
        } else {
            self.finals.first().map(|f| after(f, content_end))
        };
        let mut accepted_seen = 0;
        (0..self.rcpts)
            .map(|i| {
                let last = i + 1 == self.rcpts;
                let shared = |s: &mut Option<(Disposition, String)>| {
                    if last {
                        s.take()
                    } else {
                        s.clone()
                    }
                };
                if let Some(m) = shared(&mut mail) {
                    return m;
                }
                let Some(rr) = self.rcpt_replies.get(i) else {
                    return lost();
                };
                if !rr.is_ok() {
                    return after(rr, "RCPT TO");
                }
                let idx = accepted_seen;
                accepted_seen += 1;
                if self.data.is_none() && !self.chunked {
                    return lost();
                }
                if let Some(r) = shared(&mut refused) {
                    return r;
                }
                let decisive = if self.lmtp {
                    self.finals.get(idx).map(|f| after(f, content_end))
                } else {
                    shared(&mut final_reply)
                };
                decisive.unwrap_or_else(lost)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(code: u16, text: &str) -> Reply {
        Reply {
            code,
            text: text.into(),
        }
    }

    #[test]
    fn capabilities() {
        let lines: Vec<String> = [
            "250-mx.test",
            "250-PIPELINING",
            "250-SIZE 1000",
            "250-8BITMIME",
            "250-STARTTLS",
            "250 DSN",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let c = Capabilities::from_ehlo(&lines);
        assert!(
            c.pipelining && c.eight_bit_mime && c.starttls && c.dsn && !c.smtputf8 && !c.chunking
        );
        assert_eq!(c.size, Some(1000));
        let env = OutEnvelope {
            sender: "a@b",
            smtputf8: true,
            eight_bit: false,
            ret: None,
            envid: None,
            size: 10,
        };
        assert!(matches!(precheck(&env, &c), Err(Failure::Refused(t)) if t.contains("5.6.7")));
        let env = OutEnvelope {
            smtputf8: false,
            size: 1001,
            ..env
        };
        assert!(matches!(precheck(&env, &c), Err(Failure::Refused(t)) if t.contains("5.3.4")));
    }

    #[test]
    fn commands() {
        let c = Capabilities {
            esmtp: true,
            size: Some(100),
            eight_bit_mime: true,
            dsn: true,
            ..Capabilities::default()
        };
        let env = OutEnvelope {
            sender: "a@b.test",
            smtputf8: false,
            eight_bit: true,
            ret: Some(Ret::Hdrs),
            envid: Some("X+2B"),
            size: 42,
        };
        let mut out = Vec::new();
        mail_command(&env, &c, &mut out);
        rcpt_command(
            &OutRcpt {
                address: "c@d.test",
                notify: Some(notify::SUCCESS | notify::FAILURE),
                orcpt: Some("rfc822;c@d.test"),
            },
            &c,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "MAIL FROM:<a@b.test> SIZE=42 BODY=8BITMIME RET=HDRS ENVID=X+2B\r\nRCPT TO:<c@d.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d.test\r\n"
        );
        let plain = Capabilities::default();
        let mut out = Vec::new();
        mail_command(&env, &plain, &mut out);
        assert_eq!(out, b"MAIL FROM:<a@b.test>\r\n");
    }

    #[test]
    fn pipelined_mixed_recipients() {
        let mut t = Transaction::new(3, true, false);
        assert_eq!(t.on_reply(r(250, "2.1.0 ok")), Step::Read);
        assert_eq!(t.on_reply(r(250, "2.1.5 ok")), Step::Read);
        assert_eq!(t.on_reply(r(451, "4.2.0 later")), Step::Read);
        assert_eq!(t.on_reply(r(550, "5.1.1 no")), Step::Read);
        assert_eq!(t.on_reply(r(354, "go")), Step::SendContent);
        assert_eq!(
            t.on_reply(r(250, "2.0.0 queued")),
            Step::Done { clean: true }
        );
        let lost = Failure::Lost("x".into());
        let res: Vec<Disposition> = t.results(&lost).into_iter().map(|x| x.0).collect();
        assert_eq!(
            res,
            vec![
                Disposition::Delivered,
                Disposition::Deferred,
                Disposition::Failed
            ]
        );
    }

    #[test]
    fn reply_texts_name_the_command_they_answer() {
        let lost = Failure::Lost("451 4.4.2 lost".into());
        let texts = |t: &Transaction| -> Vec<String> {
            t.results(&lost).into_iter().map(|x| x.1).collect()
        };
        let mut t = Transaction::new(3, true, false);
        for reply in [(250, "ok"), (250, "ok"), (451, "4.2.0 later"), (250, "ok")] {
            t.on_reply(r(reply.0, reply.1));
        }
        t.on_reply(r(354, "go"));
        t.on_reply(r(250, "2.0.0 queued"));
        assert_eq!(
            texts(&t),
            [
                "250 2.0.0 queued (in reply to end of data)",
                "451 4.2.0 later (in reply to RCPT TO)",
                "250 2.0.0 queued (in reply to end of data)",
            ]
        );
        let mut t = Transaction::new(2, true, false);
        t.on_reply(r(550, "5.7.1 sender refused"));
        assert_eq!(
            texts(&t),
            ["550 5.7.1 sender refused (in reply to MAIL FROM)"; 2]
        );
        let mut t = Transaction::new(2, true, false);
        for reply in [
            (250, "ok"),
            (250, "ok"),
            (250, "ok"),
            (554, "5.3.4 too big"),
        ] {
            t.on_reply(r(reply.0, reply.1));
        }
        assert_eq!(texts(&t), ["554 5.3.4 too big (in reply to DATA)"; 2]);
        let mut t = Transaction::new(2, false, true);
        for reply in [(250, "ok"), (250, "ok"), (250, "ok"), (354, "go")] {
            t.on_reply(r(reply.0, reply.1));
        }
        t.on_reply(r(250, "2.1.5 one"));
        assert_eq!(
            texts(&t),
            ["250 2.1.5 one (in reply to end of data)", "451 4.4.2 lost"]
        );
    }

    #[test]
    fn chunked_transactions_end_with_the_chunk_reply() {
        let lost = Failure::Lost("451 4.4.2 lost".into());
        let texts = |t: &Transaction| -> Vec<String> {
            t.results(&lost).into_iter().map(|x| x.1).collect()
        };
        // Two recipients, one refused: the chunk's reply decides the other.
        let mut t = Transaction::chunked(2);
        assert_eq!(t.on_reply(r(250, "2.1.0 ok")), Step::Read);
        assert_eq!(t.on_reply(r(550, "5.1.1 no")), Step::Read);
        assert_eq!(t.on_reply(r(250, "2.1.5 ok")), Step::Read);
        assert_eq!(
            t.on_reply(r(250, "2.0.0 queued")),
            Step::Done { clean: true }
        );
        assert_eq!(
            texts(&t),
            [
                "550 5.1.1 no (in reply to RCPT TO)",
                "250 2.0.0 queued (in reply to BDAT LAST)"
            ]
        );
        // One recipient; these replies fed in order: the transaction and the last step.
        let one = |replies: &[(u16, &str)]| {
            let mut t = Transaction::chunked(1);
            let last = replies.iter().map(|&(c, x)| t.on_reply(r(c, x))).last();
            (t, last)
        };
        // The chunk refused: every accepted recipient takes that reply; RSET follows.
        let (t, last) = one(&[(250, "ok"), (250, "ok"), (552, "5.3.4 too big")]);
        assert_eq!(last, Some(Step::Done { clean: false }));
        assert_eq!(texts(&t), ["552 5.3.4 too big (in reply to BDAT LAST)"]);
        assert_eq!(t.results(&lost)[0].0, Disposition::Failed);
        assert!(
            t.chunk_not_implemented().is_none(),
            "a refusal of the content"
        );
        // BDAT refused as a command after the envelope was taken: CHUNKING is broken.
        let (t, _) = one(&[
            (250, "ok"),
            (250, "ok"),
            (502, "5.5.1 command not implemented"),
        ]);
        assert_eq!(t.chunk_not_implemented().map(|r| r.code), Some(502));
        // No recipient accepted: the chunk's refusal is read and decides nothing.
        let (t, last) = one(&[
            (250, "ok"),
            (451, "4.2.0 later"),
            (503, "5.5.1 no valid recipients"),
        ]);
        assert_eq!(last, Some(Step::Done { clean: false }));
        assert_eq!(texts(&t), ["451 4.2.0 later (in reply to RCPT TO)"]);
        assert!(t.chunk_not_implemented().is_none());
        // The connection broke before the chunk's reply: the content may have arrived.
        let (t, last) = one(&[(250, "ok"), (250, "ok")]);
        assert_eq!(last, Some(Step::Read));
        assert_eq!(texts(&t), ["451 4.4.2 lost"]);
        assert_eq!(t.results(&lost)[0].0, Disposition::Deferred);
    }

    #[test]
    fn lock_step_and_lmtp() {
        let mut t = Transaction::new(2, false, true);
        assert_eq!(t.on_reply(r(250, "ok")), Step::SendRcpt(0));
        assert_eq!(t.on_reply(r(250, "ok")), Step::SendRcpt(1));
        assert_eq!(t.on_reply(r(250, "ok")), Step::SendData);
        assert_eq!(t.on_reply(r(354, "go")), Step::SendContent);
        assert_eq!(t.on_reply(r(250, "2.1.5 delivered")), Step::Read);
        assert_eq!(t.on_reply(r(552, "5.2.2 full")), Step::Done { clean: true });
        let res: Vec<Disposition> = t
            .results(&Failure::Lost("x".into()))
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(res, vec![Disposition::Delivered, Disposition::Failed]);
    }

    #[test]
    fn failures_and_lost_connections() {
        let mut t = Transaction::new(1, false, false);
        assert_eq!(t.on_reply(r(421, "4.3.2 bye")), Step::Done { clean: false });
        assert_eq!(
            t.results(&Failure::Lost("x".into()))[0].0,
            Disposition::Deferred
        );
        let mut t = Transaction::new(2, true, false);
        t.on_reply(r(250, "ok"));
        t.on_reply(r(250, "ok"));
        // The connection broke here.
        let res = t.results(&Failure::Lost("451 4.4.2 connection lost".into()));
        assert_eq!(
            res[1],
            (Disposition::Deferred, "451 4.4.2 connection lost".into())
        );
        let mut t = Transaction::new(1, true, false);
        t.on_reply(r(250, "ok"));
        t.on_reply(r(550, "no"));
        assert_eq!(t.on_reply(r(354, "go")), Step::SendEmpty);
        assert_eq!(t.on_reply(r(554, "no valid")), Step::Done { clean: true });
        assert_eq!(r(550, "5.1.1 no such user").enhanced(), Some("5.1.1"));
        assert_eq!(r(550, "no such user").enhanced(), None);
    }
}
