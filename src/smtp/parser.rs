//! SMTP command lines, zero-copy over the read buffer.
//!
//! `frame` finds the next CRLF-terminated line with memchr and resumes wherever the
//! previous call stopped; `parse_command` turns one line into a [`Command`] that borrows
//! from it. Neither allocates. Every error is a complete reply line (code, enhanced code,
//! and the grammar that was expected), so each error maps to exactly one reply. After an
//! error the caller skips to the next LF, which keeps the session in step.

use super::address::{self, Path};

/// Why a line was not framed; each is one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// No LF within the limit. `consumed` octets are gone; `complete` says whether the
    /// line's LF was among them (if not, the caller drains to the next LF).
    TooLong { consumed: usize, complete: bool },
    /// A line ended by LF without CR; `consumed` includes the LF.
    BareLf { consumed: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A line without its CRLF, and the octets it used including the CRLF.
    Line(&'a [u8], usize),
    /// No complete line yet; read more.
    Incomplete,
}

/// Finds the next command line in `buf`. `line_bytes_max` counts the CRLF.
pub fn frame(buf: &[u8], line_bytes_max: usize) -> Result<Frame<'_>, FrameError> {
    let window = &buf[..buf.len().min(line_bytes_max)];
    match memchr::memchr(b'\n', window) {
        Some(lf) if lf > 0 && buf[lf - 1] == b'\r' => Ok(Frame::Line(&buf[..lf - 1], lf + 1)),
        Some(lf) => Err(FrameError::BareLf { consumed: lf + 1 }),
        None if buf.len() < line_bytes_max => Ok(Frame::Incomplete),
        None => match memchr::memchr(b'\n', &buf[window.len()..]) {
            Some(lf) => Err(FrameError::TooLong {
                consumed: window.len() + lf + 1,
                complete: true,
            }),
            None => Err(FrameError::TooLong {
                consumed: buf.len(),
                complete: false,
            }),
        },
    }
}

/// Skips to just past the next LF (drain state after an overlong line).
/// Returns the octets consumed and whether the LF was found.
pub fn skip_line(buf: &[u8]) -> (usize, bool) {
    match memchr::memchr(b'\n', buf) {
        Some(lf) => (lf + 1, true),
        None => (buf.len(), false),
    }
}

pub const LINE_TOO_LONG: &str = "500 5.5.2 Error: line too long";
pub const BARE_LF: &str = "500 5.5.2 Error: bare <LF> received in command";

impl FrameError {
    pub fn reply(&self) -> &'static str {
        match self {
            FrameError::TooLong { .. } => LINE_TOO_LONG,
            FrameError::BareLf { .. } => BARE_LF,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

/// RFC 3461 NOTIFY as bit flags; `NEVER` is the empty set with `explicit` set.
pub mod notify {
    pub const SUCCESS: u8 = 1;
    pub const FAILURE: u8 = 2;
    pub const DELAY: u8 = 4;
    pub const NEVER: u8 = 8;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MailParams<'a> {
    pub size: Option<u64>,
    pub body: Option<Body>,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// xtext as received (RFC 3461 4.4).
    pub envid: Option<&'a [u8]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RcptParams<'a> {
    /// `notify::*` flags; None when not given.
    pub notify: Option<u8>,
    /// ORCPT=addr-type;xtext, as received.
    pub orcpt: Option<&'a [u8]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    Helo(&'a [u8]),
    Ehlo(&'a [u8]),
    Mail(Path<'a>, MailParams<'a>),
    Rcpt(Path<'a>, RcptParams<'a>),
    Data,
    Bdat { size: u64, last: bool },
    Rset,
    Noop,
    Quit,
    Vrfy(&'a [u8]),
    Expn(&'a [u8]),
    Help,
    Turn,
    Etrn(&'a [u8]),
    StartTls,
    Auth(&'a [u8]),
}

/// A complete reply line (without CRLF) for a line that did not parse.
pub type CmdError = &'static str;

pub const UNKNOWN: CmdError = "500 5.5.1 Error: command not recognized";
const NUL: CmdError = "500 5.5.2 Error: NUL character in command";
const BARE_CR: CmdError = "500 5.5.2 Error: bare <CR> received in command";
const NON_ASCII_ARG: CmdError = "501 5.5.2 Error: 8-bit octets in a command argument";
const UNKNOWN_PARAM: CmdError = "555 5.5.4 Unsupported MAIL FROM or RCPT TO parameter";
const DUPLICATE_PARAM: CmdError = "501 5.5.4 Error: parameter given twice";

/// Largest BDAT chunk size we parse; anything bigger exceeds every message limit anyway.
const BDAT_DIGITS_MAX: usize = 19;
/// RFC 3461 4.4: ENVID is at most 100 characters; ORCPT at most 500.
const ENVID_BYTES_MAX: usize = 100;
const ORCPT_BYTES_MAX: usize = 500;

/// Four-letter verbs compared as one little-endian word, case folded (ASCII | 0x20).
const fn verb(w: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*w) | 0x2020_2020
}

pub fn parse_command(line: &[u8]) -> Result<Command<'_>, CmdError> {
    if memchr::memchr(0, line).is_some() {
        return Err(NUL);
    }
    if memchr::memchr(b'\r', line).is_some() {
        return Err(BARE_CR);
    }
    if line.len() < 4 {
        return Err(UNKNOWN);
    }
    let word = u32::from_le_bytes([line[0], line[1], line[2], line[3]]) | 0x2020_2020;
    let rest = &line[4..];
    // The verb must end the line or be followed by a space.
    let args = match rest.first() {
        None => &rest[..0],
        Some(b' ') => &rest[1..],
        Some(_) if word == verb(b"star") && rest.eq_ignore_ascii_case(b"ttls") => {
            return Ok(Command::StartTls);
        }
        Some(_) => return Err(UNKNOWN),
    };
    match word {
        w if w == verb(b"ehlo") => hello(args)
            .map(Command::Ehlo)
            .map_err(|_| "501 5.5.4 Syntax: EHLO hostname"),
        w if w == verb(b"helo") => hello(args)
            .map(Command::Helo)
            .map_err(|_| "501 5.5.4 Syntax: HELO hostname"),
        w if w == verb(b"mail") => mail(args),
        w if w == verb(b"rcpt") => rcpt(args),
        w if w == verb(b"data") => no_args(args, Command::Data, "501 5.5.4 Syntax: DATA"),
        w if w == verb(b"bdat") => bdat(args),
        w if w == verb(b"rset") => no_args(args, Command::Rset, "501 5.5.4 Syntax: RSET"),
        // RFC 5321 4.1.1.9: NOOP may carry a string, which is ignored.
        w if w == verb(b"noop") => Ok(Command::Noop),
        w if w == verb(b"quit") => no_args(args, Command::Quit, "501 5.5.4 Syntax: QUIT"),
        w if w == verb(b"vrfy") => {
            string_arg(args, "501 5.5.4 Syntax: VRFY address").map(Command::Vrfy)
        }
        w if w == verb(b"expn") => {
            string_arg(args, "501 5.5.4 Syntax: EXPN list").map(Command::Expn)
        }
        w if w == verb(b"help") => Ok(Command::Help),
        w if w == verb(b"turn") => no_args(args, Command::Turn, "501 5.5.4 Syntax: TURN"),
        w if w == verb(b"etrn") => etrn(args),
        w if w == verb(b"auth") => {
            string_arg(args, "501 5.5.4 Syntax: AUTH mechanism").map(Command::Auth)
        }
        _ => Err(UNKNOWN),
    }
}

fn no_args<'a>(args: &'a [u8], cmd: Command<'a>, err: CmdError) -> Result<Command<'a>, CmdError> {
    if args.iter().all(|&b| b == b' ') {
        Ok(cmd)
    } else {
        Err(err)
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn string_arg(args: &[u8], err: CmdError) -> Result<&[u8], CmdError> {
    let a = trim(args);
    if a.is_empty() {
        return Err(err);
    }
    if a.iter().any(|&b| b >= 0x80) && std::str::from_utf8(a).is_err() {
        return Err(NON_ASCII_ARG);
    }
    Ok(a)
}

/// EHLO/HELO argument: a domain or an address literal.
fn hello(args: &[u8]) -> Result<&[u8], ()> {
    let a = trim(args);
    if address::is_domain(a, false) || address::is_address_literal(a) {
        Ok(a)
    } else {
        Err(())
    }
}

fn etrn(args: &[u8]) -> Result<Command<'_>, CmdError> {
    // RFC 1985: ETRN [@ | #] node-name
    let a = trim(args);
    let name = a
        .strip_prefix(b"@")
        .or_else(|| a.strip_prefix(b"#"))
        .unwrap_or(a);
    if !name.is_empty() && (address::is_domain(name, false) || a[0] == b'#') {
        Ok(Command::Etrn(a))
    } else {
        Err("501 5.5.4 Syntax: ETRN domain")
    }
}

fn bdat(args: &[u8]) -> Result<Command<'_>, CmdError> {
    const SYNTAX: CmdError = "501 5.5.4 Syntax: BDAT size [LAST]";
    let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let size = words.next().ok_or(SYNTAX)?;
    if size.len() > BDAT_DIGITS_MAX || !size.iter().all(u8::is_ascii_digit) {
        return Err(SYNTAX);
    }
    let size = size.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"last") => true,
        Some(_) => return Err(SYNTAX),
    };
    if words.next().is_some() {
        return Err(SYNTAX);
    }
    Ok(Command::Bdat { size, last })
}

/// "FROM:" / "TO:" then optional spaces (tolerated, as Postfix does) then the path.
fn path_after<'a>(args: &'a [u8], keyword: &[u8]) -> Option<&'a [u8]> {
    if args.len() < keyword.len() || !args[..keyword.len()].eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = &args[keyword.len()..];
    let skip = rest.iter().take_while(|&&b| b == b' ').count();
    Some(&rest[skip..])
}

fn mail(args: &[u8]) -> Result<Command<'_>, CmdError> {
    const SYNTAX: CmdError = "501 5.5.4 Syntax: MAIL FROM:<address>";
    let input = path_after(args, b"FROM:").ok_or(SYNTAX)?;
    let (path, rest) =
        address::parse_path(input, false).map_err(address::PathError::sender_reply)?;
    let mut p = MailParams::default();
    for param in params(rest)? {
        let (key, value) = split_param(param);
        if key.eq_ignore_ascii_case(b"SIZE") {
            let v = value
                .filter(|v| !v.is_empty() && v.len() <= 20 && v.iter().all(u8::is_ascii_digit));
            let n = v
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                .ok_or("501 5.5.4 Bad SIZE value")?;
            set_once(&mut p.size, n)?;
        } else if key.eq_ignore_ascii_case(b"BODY") {
            let body = match value {
                Some(v) if v.eq_ignore_ascii_case(b"7BIT") => Body::SevenBit,
                Some(v) if v.eq_ignore_ascii_case(b"8BITMIME") => Body::EightBitMime,
                _ => return Err("501 5.5.4 Bad BODY value: use 7BIT or 8BITMIME"),
            };
            set_once(&mut p.body, body)?;
        } else if key.eq_ignore_ascii_case(b"SMTPUTF8") {
            if value.is_some() {
                return Err("501 5.5.4 SMTPUTF8 takes no value");
            }
            if p.smtputf8 {
                return Err(DUPLICATE_PARAM);
            }
            p.smtputf8 = true;
        } else if key.eq_ignore_ascii_case(b"RET") {
            let ret = match value {
                Some(v) if v.eq_ignore_ascii_case(b"FULL") => Ret::Full,
                Some(v) if v.eq_ignore_ascii_case(b"HDRS") => Ret::Hdrs,
                _ => return Err("501 5.5.4 Bad RET value: use FULL or HDRS"),
            };
            set_once(&mut p.ret, ret)?;
        } else if key.eq_ignore_ascii_case(b"ENVID") {
            let v = value.filter(|v| !v.is_empty() && v.len() <= ENVID_BYTES_MAX && is_xtext(v));
            set_once(&mut p.envid, v.ok_or("501 5.5.4 Bad ENVID value")?)?;
        } else {
            return Err(UNKNOWN_PARAM);
        }
    }
    Ok(Command::Mail(path, p))
}

fn rcpt(args: &[u8]) -> Result<Command<'_>, CmdError> {
    const SYNTAX: CmdError = "501 5.5.4 Syntax: RCPT TO:<address>";
    let input = path_after(args, b"TO:").ok_or(SYNTAX)?;
    let (path, rest) =
        address::parse_path(input, true).map_err(address::PathError::recipient_reply)?;
    if path == Path::Null {
        return Err("501 5.1.3 Bad recipient address syntax: empty address");
    }
    let mut p = RcptParams::default();
    for param in params(rest)? {
        let (key, value) = split_param(param);
        if key.eq_ignore_ascii_case(b"NOTIFY") {
            set_once(&mut p.notify, parse_notify(value.unwrap_or_default())?)?;
        } else if key.eq_ignore_ascii_case(b"ORCPT") {
            let ok = value.filter(|v| {
                v.len() <= ORCPT_BYTES_MAX
                    && match memchr::memchr(b';', v) {
                        Some(semi) => {
                            semi > 0
                                && v[..semi].iter().all(|&b| is_atext(b))
                                && is_xtext(&v[semi + 1..])
                                && semi + 1 < v.len()
                        }
                        None => false,
                    }
            });
            set_once(
                &mut p.orcpt,
                ok.ok_or("501 5.5.4 Bad ORCPT value: use addr-type;xtext")?,
            )?;
        } else {
            return Err(UNKNOWN_PARAM);
        }
    }
    Ok(Command::Rcpt(path, p))
}

fn is_atext(b: u8) -> bool {
    address::is_atext(b)
}

fn parse_notify(v: &[u8]) -> Result<u8, CmdError> {
    const BAD: CmdError = "501 5.5.4 Bad NOTIFY value: NEVER or SUCCESS,FAILURE,DELAY";
    if v.eq_ignore_ascii_case(b"NEVER") {
        return Ok(notify::NEVER);
    }
    let mut flags = 0;
    for word in v.split(|&b| b == b',') {
        flags |= if word.eq_ignore_ascii_case(b"SUCCESS") {
            notify::SUCCESS
        } else if word.eq_ignore_ascii_case(b"FAILURE") {
            notify::FAILURE
        } else if word.eq_ignore_ascii_case(b"DELAY") {
            notify::DELAY
        } else {
            return Err(BAD);
        };
    }
    Ok(flags)
}

/// RFC 3461 4: xtext = *( xchar / hexchar ), xchar = 33..126 except '+' and '='.
pub fn is_xtext(v: &[u8]) -> bool {
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'+' => {
                let hex = |b: Option<&u8>| {
                    b.is_some_and(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))
                };
                if !(hex(v.get(i + 1)) && hex(v.get(i + 2))) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            33..=126 => i += 1,
            _ => return false,
        }
    }
    true
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), CmdError> {
    if slot.is_some() {
        return Err(DUPLICATE_PARAM);
    }
    *slot = Some(value);
    Ok(())
}

/// The ESMTP parameters after a path: SP-separated `keyword[=value]`.
fn params(rest: &[u8]) -> Result<impl Iterator<Item = &[u8]>, CmdError> {
    match rest.first() {
        None | Some(b' ') => {}
        Some(_) => return Err("501 5.5.4 Syntax: expected a space after the address"),
    }
    if rest.iter().any(|&b| !(0x20..0x80).contains(&b)) {
        return Err(NON_ASCII_ARG);
    }
    Ok(rest.split(|&b| b == b' ').filter(|p| !p.is_empty()))
}

fn split_param(param: &[u8]) -> (&[u8], Option<&[u8]>) {
    match memchr::memchr(b'=', param) {
        Some(eq) => (&param[..eq], Some(&param[eq + 1..])),
        None => (param, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::Mailbox;

    fn mb<'a>(local: &'a str, domain: &'a str) -> Path<'a> {
        Path::Mailbox(Mailbox {
            local: local.as_bytes(),
            domain: domain.as_bytes(),
            utf8: false,
        })
    }

    #[test]
    fn framing() {
        assert_eq!(frame(b"NOOP\r\nQUIT\r\n", 512), Ok(Frame::Line(b"NOOP", 6)));
        assert_eq!(frame(b"NOO", 512), Ok(Frame::Incomplete));
        assert_eq!(frame(b"NOOP\r", 512), Ok(Frame::Incomplete));
        assert_eq!(
            frame(b"NOOP\nQUIT\r\n", 512),
            Err(FrameError::BareLf { consumed: 5 })
        );
        assert_eq!(frame(b"\n", 512), Err(FrameError::BareLf { consumed: 1 }));
        let long = [b'a'; 600];
        assert_eq!(
            frame(&long, 512),
            Err(FrameError::TooLong {
                consumed: 600,
                complete: false
            })
        );
        let mut long_line = vec![b'a'; 600];
        long_line.extend_from_slice(b"\r\nNOOP\r\n");
        assert_eq!(
            frame(&long_line, 512),
            Err(FrameError::TooLong {
                consumed: 602,
                complete: true
            })
        );
        // 510 octets + CRLF = 512: exactly at the limit
        let mut max = vec![b'a'; 510];
        max.extend_from_slice(b"\r\n");
        assert!(matches!(frame(&max, 512), Ok(Frame::Line(_, 512))));
        assert_eq!(skip_line(b"xx\nNOOP"), (3, true));
        assert_eq!(skip_line(b"xxx"), (3, false));
    }

    #[test]
    fn commands() {
        let table: &[(&str, Command)] = &[
            ("EHLO client.test", Command::Ehlo(b"client.test")),
            ("ehlo [192.0.2.1]", Command::Ehlo(b"[192.0.2.1]")),
            ("HeLo client", Command::Helo(b"client")),
            (
                "MAIL FROM:<a@b.test>",
                Command::Mail(mb("a", "b.test"), MailParams::default()),
            ),
            (
                "mail from: <a@b.test>",
                Command::Mail(mb("a", "b.test"), MailParams::default()),
            ),
            (
                "MAIL FROM:<>",
                Command::Mail(Path::Null, MailParams::default()),
            ),
            (
                "RCPT TO:<c@d.test>",
                Command::Rcpt(mb("c", "d.test"), RcptParams::default()),
            ),
            (
                "RCPT TO:<Postmaster>",
                Command::Rcpt(Path::Postmaster, RcptParams::default()),
            ),
            ("DATA", Command::Data),
            ("data", Command::Data),
            (
                "BDAT 100",
                Command::Bdat {
                    size: 100,
                    last: false,
                },
            ),
            (
                "BDAT 0 LAST",
                Command::Bdat {
                    size: 0,
                    last: true,
                },
            ),
            (
                "bdat 5 last",
                Command::Bdat {
                    size: 5,
                    last: true,
                },
            ),
            ("RSET", Command::Rset),
            ("NOOP", Command::Noop),
            ("NOOP anything", Command::Noop),
            ("QUIT", Command::Quit),
            ("VRFY user@x.test", Command::Vrfy(b"user@x.test")),
            ("EXPN team", Command::Expn(b"team")),
            ("HELP", Command::Help),
            ("HELP MAIL", Command::Help),
            ("TURN", Command::Turn),
            ("ETRN example.test", Command::Etrn(b"example.test")),
            ("ETRN @example.test", Command::Etrn(b"@example.test")),
            ("STARTTLS", Command::StartTls),
            ("starttls", Command::StartTls),
            ("AUTH PLAIN", Command::Auth(b"PLAIN")),
        ];
        for (line, want) in table {
            assert_eq!(parse_command(line.as_bytes()), Ok(*want), "{line}");
        }
    }

    #[test]
    fn parameters() {
        let Ok(Command::Mail(_, p)) = parse_command(
            b"MAIL FROM:<a@b.test> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B1",
        ) else {
            panic!()
        };
        assert_eq!(p.size, Some(1000));
        assert_eq!(p.body, Some(Body::EightBitMime));
        assert!(p.smtputf8);
        assert_eq!(p.ret, Some(Ret::Hdrs));
        assert_eq!(p.envid, Some(&b"QQ+2B1"[..]));
        let Ok(Command::Rcpt(_, p)) =
            parse_command(b"RCPT TO:<c@d.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;c@d.test")
        else {
            panic!()
        };
        assert_eq!(p.notify, Some(notify::SUCCESS | notify::DELAY));
        assert_eq!(p.orcpt, Some(&b"rfc822;c@d.test"[..]));
        let Ok(Command::Rcpt(_, p)) = parse_command(b"RCPT TO:<c@d.test> NOTIFY=NEVER") else {
            panic!()
        };
        assert_eq!(p.notify, Some(notify::NEVER));
    }

    #[test]
    fn errors_map_to_replies() {
        let table: &[(&[u8], &str)] = &[
            (b"FOO", "500 5.5.1"),
            (b"NOOPX", "500 5.5.1"),
            (b"", "500 5.5.1"),
            (b"NO\0OP", "500 5.5.2"),
            (b"NOOP\rX", "500 5.5.2"),
            (b"MAIL TO:<a@b>", "501 5.5.4"),
            (b"MAIL FROM:a@b.test", "501 5.1.7"),
            (b"MAIL FROM:<a@b.test>SIZE=1", "501 5.5.4"),
            (b"MAIL FROM:<a@b.test> SIZE=x", "501 5.5.4"),
            (b"MAIL FROM:<a@b.test> SIZE=1 SIZE=2", "501 5.5.4"),
            (b"MAIL FROM:<a@b.test> BODY=BINARYMIME", "501 5.5.4"),
            (b"MAIL FROM:<a@b.test> FOO=BAR", "555 5.5.4"),
            (b"MAIL FROM:<a@b.test> ENVID=a=b", "501 5.5.4"),
            (b"RCPT TO:<>", "501 5.1.3"),
            (b"RCPT TO:<a@-b>", "501 5.1.3"),
            (b"RCPT TO:<c@d.test> NOTIFY=SOMETIMES", "501 5.5.4"),
            (b"RCPT TO:<c@d.test> ORCPT=c@d.test", "501 5.5.4"),
            (b"RCPT TO:<c@d.test> XYZ", "555 5.5.4"),
            (b"EHLO", "501 5.5.4"),
            (b"EHLO bad_name!", "501 5.5.4"),
            (b"DATA x", "501 5.5.4"),
            (b"BDAT", "501 5.5.4"),
            (b"BDAT x", "501 5.5.4"),
            (b"BDAT 1 FIRST", "501 5.5.4"),
            (b"ETRN", "501 5.5.4"),
            (b"VRFY", "501 5.5.4"),
            (b"MAIL FROM:<a@b.test> SIZE=1\xff", "501 5.5.2"),
        ];
        for (line, code) in table {
            let err = parse_command(line).expect_err(&String::from_utf8_lossy(line));
            assert!(
                err.starts_with(code),
                "{:?}: {err}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn xtext() {
        assert!(is_xtext(b"abc+2B+3D"));
        assert!(!is_xtext(b"a+2"));
        assert!(!is_xtext(b"a+zz"));
        assert!(!is_xtext(b"a b"));
        assert!(!is_xtext(b"a=b"));
    }
}
