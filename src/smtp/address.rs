//! RFC 5321 4.1.2 path and mailbox grammar over borrowed bytes, with the RFC 6531
//! (SMTPUTF8) extension: UTF-8 is allowed in atoms, quoted strings and domain labels,
//! and the caller decides whether the transaction declared SMTPUTF8.

/// RFC 5321 4.5.3.1: size limits of the parts of a path.
pub const LOCAL_PART_BYTES_MAX: usize = 64;
pub const DOMAIN_BYTES_MAX: usize = 255;
pub const PATH_BYTES_MAX: usize = 256;

/// A mailbox borrowed from the command line. `local` keeps its quotes, as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mailbox<'a> {
    pub local: &'a [u8],
    pub domain: &'a [u8],
    /// Any octet above 0x7f in the local part or domain (valid UTF-8 checked).
    pub utf8: bool,
}

impl Mailbox<'_> {
    /// `local@domain` as text. The bytes were checked to be UTF-8.
    pub fn to_string_lossless(&self) -> String {
        let mut s = String::with_capacity(self.local.len() + 1 + self.domain.len());
        s.push_str(std::str::from_utf8(self.local).unwrap_or_default());
        s.push('@');
        s.push_str(std::str::from_utf8(self.domain).unwrap_or_default());
        s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path<'a> {
    /// `<>`: the null reverse-path of bounces.
    Null,
    /// `<Postmaster>` with no domain (RCPT only, RFC 5321 4.5.1).
    Postmaster,
    Mailbox(Mailbox<'a>),
}

/// Which part of the grammar did not match. Each variant has one reply for MAIL (5.1.7)
/// and one for RCPT (5.1.3), with the grammar that was expected in the text.
macro_rules! path_errors {
    ($($variant:ident => $text:literal,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum PathError { $($variant,)* }

        impl PathError {
            pub fn reason(self) -> &'static str {
                match self { $(PathError::$variant => $text,)* }
            }
            pub fn sender_reply(self) -> &'static str {
                match self { $(PathError::$variant => concat!("501 5.1.7 Bad sender address syntax: ", $text),)* }
            }
            pub fn recipient_reply(self) -> &'static str {
                match self { $(PathError::$variant => concat!("501 5.1.3 Bad recipient address syntax: ", $text),)* }
            }
        }
    };
}

path_errors! {
    ExpectedOpen => "expected '<'",
    ExpectedAt => "expected '@' after the local part",
    ExpectedClose => "expected '>' at the end of the address",
    NotUtf8 => "address is not valid UTF-8",
    BadLiteral => "bad address literal",
    BadDomain => "bad domain",
    LocalTooLong => "local part longer than 64 octets",
    PathTooLong => "path longer than 256 octets",
    BadRoute => "bad source route",
    BadQuotedPair => "bad quoted pair in local part",
    BadQuotedChar => "bad character in quoted local part",
    Unterminated => "unterminated quoted local part",
    EmptyLocal => "empty local part",
    MisplacedDot => "misplaced '.' in local part",
}

/// RFC 5322 atext.
pub fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

fn is_let_dig(b: u8, utf8: bool) -> bool {
    b.is_ascii_alphanumeric() || (utf8 && b >= 0x80)
}

/// RFC 5321 Domain: sub-domain *("." sub-domain), sub-domain = Let-dig [Ldh-str].
/// With `utf8`, octets above 0x7f count as letters (U-labels, RFC 6531).
pub fn is_domain(d: &[u8], utf8: bool) -> bool {
    if d.is_empty() || d.len() > DOMAIN_BYTES_MAX {
        return false;
    }
    d.split(|&b| b == b'.').all(|label| {
        !label.is_empty()
            && label.len() <= 63 * 4
            && is_let_dig(label[0], utf8)
            && is_let_dig(label[label.len() - 1], utf8)
            && label.iter().all(|&b| is_let_dig(b, utf8) || b == b'-')
    })
}

/// RFC 5321 address-literal: "[" ( IPv4 / "IPv6:" IPv6 / General ) "]".
pub fn is_address_literal(d: &[u8]) -> bool {
    let Some(inner) = d.strip_prefix(b"[").and_then(|r| r.strip_suffix(b"]")) else {
        return false;
    };
    let Ok(text) = std::str::from_utf8(inner) else {
        return false;
    };
    if let Some(v6) = text
        .strip_prefix("IPv6:")
        .or_else(|| text.strip_prefix("ipv6:"))
    {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    if text.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    // General-address-literal: Standardized-tag ":" 1*dcontent
    match text.split_once(':') {
        Some((tag, content)) => {
            !tag.is_empty()
                && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && tag.as_bytes()[tag.len() - 1] != b'-'
                && !content.is_empty()
                && content
                    .bytes()
                    .all(|b| (33..=90).contains(&b) || (94..=126).contains(&b))
        }
        None => false,
    }
}

/// Parses a path starting at `<`; returns it and what follows the closing `>`.
/// Source routes (`<@a,@b:user@c>`) are accepted and ignored (RFC 5321 appendix C).
pub fn parse_path(input: &[u8], allow_postmaster: bool) -> Result<(Path<'_>, &[u8]), PathError> {
    let Some(rest) = input.strip_prefix(b"<") else {
        return Err(PathError::ExpectedOpen);
    };
    if let Some(after) = rest.strip_prefix(b">") {
        return Ok((Path::Null, after));
    }
    let rest = skip_source_route(rest)?;
    if allow_postmaster
        && rest.len() >= 11
        && rest[..10].eq_ignore_ascii_case(b"postmaster")
        && rest[10] == b'>'
    {
        return Ok((Path::Postmaster, &rest[11..]));
    }
    let (local, rest) = local_part(rest)?;
    let Some(rest) = rest.strip_prefix(b"@") else {
        return Err(PathError::ExpectedAt);
    };
    let end = memchr::memchr(b'>', rest).ok_or(PathError::ExpectedClose)?;
    let domain = &rest[..end];
    let utf8 = local.iter().chain(domain).any(|&b| b >= 0x80);
    if utf8 && (std::str::from_utf8(local).is_err() || std::str::from_utf8(domain).is_err()) {
        return Err(PathError::NotUtf8);
    }
    if domain.first() == Some(&b'[') {
        if !is_address_literal(domain) {
            return Err(PathError::BadLiteral);
        }
    } else if !is_domain(domain, utf8) {
        return Err(PathError::BadDomain);
    }
    if local.len() > LOCAL_PART_BYTES_MAX {
        return Err(PathError::LocalTooLong);
    }
    if local.len() + 1 + domain.len() + 2 > PATH_BYTES_MAX {
        return Err(PathError::PathTooLong);
    }
    Ok((
        Path::Mailbox(Mailbox {
            local,
            domain,
            utf8,
        }),
        &rest[end + 1..],
    ))
}

/// A-d-l = At-domain *( "," At-domain ) ":"
fn skip_source_route(input: &[u8]) -> Result<&[u8], PathError> {
    if input.first() != Some(&b'@') {
        return Ok(input);
    }
    let colon = memchr::memchr(b':', input).ok_or(PathError::BadRoute)?;
    for hop in input[..colon].split(|&b| b == b',') {
        let ok = hop
            .strip_prefix(b"@")
            .is_some_and(|d| is_domain(d, false) || is_address_literal(d));
        if !ok {
            return Err(PathError::BadRoute);
        }
    }
    Ok(&input[colon + 1..])
}

/// Local-part = Dot-string / Quoted-string; returns it (quotes kept) and the rest.
fn local_part(input: &[u8]) -> Result<(&[u8], &[u8]), PathError> {
    if input.first() == Some(&b'"') {
        let mut i = 1;
        while i < input.len() {
            match input[i] {
                b'"' => return Ok((&input[..=i], &input[i + 1..])),
                b'\\' => {
                    // quoted-pairSMTP = %d92 %d32-126
                    match input.get(i + 1) {
                        Some(32..=126) => i += 2,
                        _ => return Err(PathError::BadQuotedPair),
                    }
                }
                32 | 33 | 35..=91 | 93..=126 | 0x80..=0xff => i += 1,
                _ => return Err(PathError::BadQuotedChar),
            }
        }
        return Err(PathError::Unterminated);
    }
    let end = input
        .iter()
        .position(|&b| !(is_atext(b) || b == b'.' || b >= 0x80))
        .unwrap_or(input.len());
    let local = &input[..end];
    if local.is_empty() {
        return Err(PathError::EmptyLocal);
    }
    if local.split(|&b| b == b'.').any(|atom| atom.is_empty()) {
        return Err(PathError::MisplacedDot);
    }
    Ok((local, &input[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str) -> Path<'_> {
        let (p, rest) = parse_path(input.as_bytes(), true)
            .unwrap_or_else(|e| panic!("{input}: {}", e.reason()));
        assert!(rest.is_empty(), "{input}: rest {rest:?}");
        p
    }

    fn mailbox(input: &str) -> (String, String) {
        match ok(input) {
            Path::Mailbox(m) => (
                String::from_utf8(m.local.to_vec()).unwrap(),
                String::from_utf8(m.domain.to_vec()).unwrap(),
            ),
            other => panic!("{input}: {other:?}"),
        }
    }

    #[test]
    fn grammar_accepts() {
        assert_eq!(ok("<>"), Path::Null);
        assert_eq!(ok("<Postmaster>"), Path::Postmaster);
        assert_eq!(ok("<postMASTER>"), Path::Postmaster);
        let table = [
            ("<a@b>", "a", "b"),
            ("<first.last@example.test>", "first.last", "example.test"),
            ("<a+tag@sub.example.test>", "a+tag", "sub.example.test"),
            (
                "<!#$%&'*+-/=?^_`{|}~@x.test>",
                "!#$%&'*+-/=?^_`{|}~",
                "x.test",
            ),
            ("<\"john doe\"@x.test>", "\"john doe\"", "x.test"),
            ("<\"a\\\"b\"@x.test>", "\"a\\\"b\"", "x.test"),
            ("<\"@\"@x.test>", "\"@\"", "x.test"),
            ("<u@[192.0.2.1]>", "u", "[192.0.2.1]"),
            ("<u@[IPv6:2001:db8::1]>", "u", "[IPv6:2001:db8::1]"),
            ("<u@[x-tag:stuff]>", "u", "[x-tag:stuff]"),
            ("<@relay.test:u@x.test>", "u", "x.test"),
            ("<@r1.test,@[192.0.2.1]:u@x.test>", "u", "x.test"),
            ("<u@a-b.c1.test>", "u", "a-b.c1.test"),
            ("<Postmaster@x.test>", "Postmaster", "x.test"),
        ];
        for (input, local, domain) in table {
            assert_eq!(
                mailbox(input),
                (local.to_string(), domain.to_string()),
                "{input}"
            );
        }
    }

    #[test]
    fn grammar_rejects() {
        for bad in [
            "a@b>",
            "<a@b",
            "<a>",
            "<@b>",
            "<a@>",
            "<.a@b>",
            "<a.@b>",
            "<a..b@c>",
            "<a b@c>",
            "<a@-b.test>",
            "<a@b-.test>",
            "<a@b..test>",
            "<a@[300.1.1.1]>",
            "<a@[IPv6:zz]>",
            "<\"unterminated@x>",
            "<@bad route:u@x.test>",
            "<a@b@c>",
            "<a\\b@c>",
        ] {
            assert!(parse_path(bad.as_bytes(), true).is_err(), "{bad} accepted");
        }
        let long_local = format!("<{}@x.test>", "a".repeat(65));
        assert!(parse_path(long_local.as_bytes(), false).is_err());
        let long_domain = format!("<a@{}.test>", "b.".repeat(130));
        assert!(parse_path(long_domain.as_bytes(), false).is_err());
    }

    #[test]
    fn utf8() {
        let Path::Mailbox(m) = ok("<pelé@exämple.test>") else {
            panic!()
        };
        assert!(m.utf8);
        let Path::Mailbox(m) = ok("<pele@example.test>") else {
            panic!()
        };
        assert!(!m.utf8);
        assert!(parse_path(b"<a\xff@b.test>", false).is_err());
    }

    #[test]
    fn rest_is_returned() {
        let (_, rest) = parse_path(b"<a@b.test> SIZE=10", false).unwrap();
        assert_eq!(rest, b" SIZE=10");
    }
}
