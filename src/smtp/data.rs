//! Message content: the DATA end-of-body scan with dot-unstuffing, and BDAT chunks.
//!
//! The only end of DATA is CR LF "." CR LF (RFC 5321 4.1.1.4). A bare CR or bare LF
//! anywhere in the content is recorded and the message is refused once the real end is
//! found, so no variant of `<LF>.<LF>`, `<LF>.<CR><LF>`, `<CR>.<CR><LF>`, `<CR><LF>.<CR>`
//! or `<CR><LF>.<LF>` ends the message early or ever leaves this relay (SMTP smuggling).
//! The scan jumps from line end to line end with memchr2 and copies whole spans.

/// Where the scanner stands between two calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// At the start of a line (after CRLF, or at the start of the content).
    LineStart,
    /// After a leading '.' at the start of a line.
    Dot,
    /// After CR LF '.' CR: one LF more ends the content.
    DotCr,
    /// Inside a line.
    Mid,
    /// After a CR inside a line.
    Cr,
}

#[derive(Debug)]
pub struct DataScanner {
    st: St,
    /// Content octets seen (after unstuffing), counted even past the limit.
    bytes: u64,
    limit_bytes: u64,
    bare_newline: bool,
}

/// What the content turned out to be, once its end was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataEnd {
    pub bytes: u64,
    pub over_limit: bool,
    pub bare_newline: bool,
}

impl DataScanner {
    pub fn new(limit_bytes: u64) -> DataScanner {
        DataScanner {
            st: St::LineStart,
            bytes: 0,
            limit_bytes,
            bare_newline: false,
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, span: &[u8]) {
        self.bytes += span.len() as u64;
        if self.bytes <= self.limit_bytes {
            out.extend_from_slice(span);
        }
    }

    /// Consumes content from `input`, appending it unstuffed to `out` (until the limit).
    /// Returns the octets consumed and, when the end was found, what the content was.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Option<DataEnd>) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.st {
                St::LineStart if b == b'.' => {
                    self.st = St::Dot;
                    i += 1;
                }
                St::LineStart => self.st = St::Mid,
                St::Dot if b == b'\r' => {
                    self.st = St::DotCr;
                    i += 1;
                }
                // A leading dot followed by anything else is unstuffed: the dot is dropped.
                St::Dot => self.st = St::Mid,
                St::DotCr if b == b'\n' => {
                    let end = DataEnd {
                        bytes: self.bytes,
                        over_limit: self.bytes > self.limit_bytes,
                        bare_newline: self.bare_newline,
                    };
                    *self = DataScanner::new(self.limit_bytes);
                    return (i + 1, Some(end));
                }
                St::DotCr => {
                    // "<CR><LF>.<CR>" without LF: the CR was bare.
                    self.bare_newline = true;
                    self.emit(out, b"\r");
                    self.st = St::Mid;
                }
                St::Mid => match memchr::memchr2(b'\r', b'\n', &input[i..]) {
                    Some(k) => {
                        self.emit(out, &input[i..i + k]);
                        i += k + 1;
                        if input[i - 1] == b'\r' {
                            self.st = St::Cr;
                        } else {
                            // A bare LF does not start a line: ".\r\n" after it is not an end.
                            self.bare_newline = true;
                            self.emit(out, b"\n");
                        }
                    }
                    None => {
                        self.emit(out, &input[i..]);
                        i = input.len();
                    }
                },
                St::Cr if b == b'\n' => {
                    self.emit(out, b"\r\n");
                    self.st = St::LineStart;
                    i += 1;
                }
                St::Cr => {
                    self.bare_newline = true;
                    self.emit(out, b"\r");
                    self.st = St::Mid;
                }
            }
        }
        (i, None)
    }
}

/// Checks BDAT content, which is not dot-stuffed, for bare CR and LF across chunks:
/// what is relayed later as DATA must be clean CRLF text.
#[derive(Debug, Default)]
pub struct BareNewlineCheck {
    after_cr: bool,
    pub found: bool,
}

impl BareNewlineCheck {
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.found || chunk.is_empty() {
            return;
        }
        let mut i = 0;
        if self.after_cr {
            if chunk[0] != b'\n' {
                self.found = true;
                return;
            }
            i = 1;
        }
        self.after_cr = false;
        while let Some(k) = memchr::memchr2(b'\r', b'\n', &chunk[i..]) {
            let at = i + k;
            if chunk[at] == b'\n' {
                self.found = true;
                return;
            }
            match chunk.get(at + 1) {
                Some(b'\n') => i = at + 2,
                Some(_) => {
                    self.found = true;
                    return;
                }
                None => {
                    self.after_cr = true;
                    return;
                }
            }
        }
    }

    /// At the last chunk: a trailing CR with nothing after it is bare too.
    pub fn finish(&mut self) -> bool {
        self.found || self.after_cr
    }
}

/// Counts `Received:` header fields in the header section (up to the first empty line).
pub fn count_received(message: &[u8]) -> u32 {
    let mut count = 0;
    let mut line_start = 0;
    while line_start < message.len() {
        let line_end = memchr::memchr(b'\n', &message[line_start..])
            .map_or(message.len(), |k| line_start + k + 1);
        let line = &message[line_start..line_end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:") {
            count += 1;
        }
        line_start = line_end;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(input: &[u8]) -> (Vec<u8>, usize, Option<DataEnd>) {
        let mut s = DataScanner::new(1 << 20);
        let mut out = Vec::new();
        let (used, end) = s.feed(input, &mut out);
        (out, used, end)
    }

    #[test]
    fn plain_end_and_unstuffing() {
        let (out, used, end) = scan(b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n");
        assert_eq!(out, b"Subject: x\r\n\r\n.leading dot\r\n");
        assert_eq!(used, 32);
        let end = end.unwrap();
        assert!(!end.bare_newline && !end.over_limit);
        assert_eq!(end.bytes, out.len() as u64);
    }

    #[test]
    fn empty_message() {
        let (out, used, end) = scan(b".\r\n");
        assert!(out.is_empty());
        assert_eq!(used, 3);
        assert!(end.is_some());
    }

    #[test]
    fn smuggling_variants_do_not_end_and_are_flagged() {
        for variant in [
            &b"\n.\n"[..],
            b"\n.\r\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r\n.\n",
        ] {
            let mut input = b"a".to_vec();
            input.extend_from_slice(variant);
            input.extend_from_slice(b"MAIL FROM:<evil@x.test>\r\n");
            let (_, used, end) = scan(&input);
            assert!(end.is_none(), "{variant:?} ended the data");
            assert_eq!(used, input.len());
            input.extend_from_slice(b"\r\n.\r\n");
            let (_, used, end) = scan(&input);
            assert_eq!(used, input.len());
            assert!(end.unwrap().bare_newline, "{variant:?} not flagged");
        }
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let input = b"A: b\r\n.x\r\n..\r\nbody\rbare\r\n.\r\nrest";
        let (whole, used, end) = scan(input);
        let mut s = DataScanner::new(1 << 20);
        let mut out = Vec::new();
        let mut total = 0;
        let mut got = None;
        for b in input.chunks(1) {
            let (u, e) = s.feed(b, &mut out);
            total += u;
            if e.is_some() {
                got = e;
                break;
            }
        }
        assert_eq!(out, whole);
        assert_eq!(total, used);
        assert_eq!(got, end);
    }

    #[test]
    fn limit() {
        let mut s = DataScanner::new(4);
        let mut out = Vec::new();
        let (_, end) = s.feed(b"123456\r\n.\r\n", &mut out);
        let end = end.unwrap();
        assert!(end.over_limit);
        assert_eq!(end.bytes, 8);
        assert!(out.len() <= 4);
    }

    #[test]
    fn bdat_bare_check() {
        let mut c = BareNewlineCheck::default();
        c.feed(b"a\r");
        c.feed(b"\nb\r\n");
        assert!(!c.finish());
        for bad in [&b"a\nb"[..], b"a\rb", b"a\r"] {
            let mut c = BareNewlineCheck::default();
            c.feed(bad);
            assert!(c.finish(), "{bad:?}");
        }
    }

    #[test]
    fn received_count() {
        let m =
            b"Received: a\r\nreceived: b\r\n\tcont\r\nSubject: x\r\n\r\nReceived: not a header\r\n";
        assert_eq!(count_received(m), 2);
    }
}
