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

/// RFC 5322 2.1.1 / RFC 5321 4.5.3.1.6: a line is at most 998 octets before its CRLF.
/// ringpost refuses longer lines at input rather than folding them, so nothing it relays
/// ever breaks the limit.
pub const LINE_BYTES_MAX: usize = 998;

#[derive(Debug)]
pub struct DataScanner {
    st: St,
    /// Content octets seen (after unstuffing), counted even past the limit.
    bytes: u64,
    limit_bytes: u64,
    bare_newline: bool,
    /// Keep the content in wire form (dot-stuffed), as the queue stores it.
    keep_stuffing: bool,
    /// Octets of the current line so far, as on the wire.
    line_bytes: usize,
    long_line: bool,
}

/// What the content turned out to be, once its end was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataEnd {
    pub bytes: u64,
    pub over_limit: bool,
    pub bare_newline: bool,
    /// A line longer than [`LINE_BYTES_MAX`].
    pub long_line: bool,
}

impl DataScanner {
    /// A scanner that unstuffs (the content as the sender meant it).
    pub fn new(limit_bytes: u64) -> DataScanner {
        DataScanner {
            st: St::LineStart,
            bytes: 0,
            limit_bytes,
            bare_newline: false,
            keep_stuffing: false,
            line_bytes: 0,
            long_line: false,
        }
    }

    /// A scanner that keeps the dot-stuffing: the output can be sent as DATA as it is.
    pub fn wire_form(limit_bytes: u64) -> DataScanner {
        DataScanner {
            keep_stuffing: true,
            ..DataScanner::new(limit_bytes)
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, span: &[u8]) {
        self.line_bytes += span.len();
        self.bytes += span.len() as u64;
        if self.bytes <= self.limit_bytes {
            out.extend_from_slice(span);
        }
    }

    /// Consumes content from `input`, appending it to `out` (until the limit), unstuffed or
    /// in wire form.
    /// Returns the octets consumed and, when the end was found, what the content was.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Option<DataEnd>) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.st {
                St::LineStart if b == b'.' => {
                    self.st = St::Dot;
                    self.line_bytes = 1;
                    i += 1;
                }
                St::LineStart => self.st = St::Mid,
                St::Dot if b == b'\r' => {
                    self.st = St::DotCr;
                    i += 1;
                }
                // A leading dot followed by anything else is a stuffing dot: dropped, or
                // kept in wire form.
                St::Dot => {
                    if self.keep_stuffing {
                        self.line_bytes = 0;
                        self.emit(out, b".");
                    }
                    self.st = St::Mid;
                }
                St::DotCr if b == b'\n' => {
                    let end = DataEnd {
                        bytes: self.bytes,
                        over_limit: self.bytes > self.limit_bytes,
                        bare_newline: self.bare_newline,
                        long_line: self.long_line,
                    };
                    *self = DataScanner {
                        keep_stuffing: self.keep_stuffing,
                        ..DataScanner::new(self.limit_bytes)
                    };
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
                    self.long_line |= self.line_bytes > LINE_BYTES_MAX;
                    self.emit(out, b"\r\n");
                    self.line_bytes = 0;
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

/// BDAT content is not dot-stuffed. This checks it across chunks for bare CR and LF and
/// for overlong lines (what is relayed later as DATA must be clean CRLF text), and writes
/// it out dot-stuffed, the queue's wire form.
#[derive(Debug)]
pub struct ChunkCheck {
    after_cr: bool,
    at_line_start: bool,
    line_bytes: usize,
    pub bare_newline: bool,
    pub long_line: bool,
}

impl Default for ChunkCheck {
    fn default() -> Self {
        ChunkCheck {
            after_cr: false,
            at_line_start: true,
            line_bytes: 0,
            bare_newline: false,
            long_line: false,
        }
    }
}

impl ChunkCheck {
    /// Checks `chunk` and appends it to `out` in wire form.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < chunk.len() {
            if self.after_cr {
                self.after_cr = false;
                if chunk[i] == b'\n' {
                    out.push(b'\n');
                    self.long_line |= self.line_bytes > LINE_BYTES_MAX;
                    self.line_bytes = 0;
                    self.at_line_start = true;
                    i += 1;
                    continue;
                }
                self.bare_newline = true;
            }
            if self.at_line_start && chunk[i] == b'.' {
                out.push(b'.');
                self.line_bytes += 1;
            }
            self.at_line_start = false;
            let k = memchr::memchr2(b'\r', b'\n', &chunk[i..]).map_or(chunk.len(), |k| i + k);
            out.extend_from_slice(&chunk[i..k]);
            self.line_bytes += k - i;
            if k == chunk.len() {
                return;
            }
            out.push(chunk[k]);
            if chunk[k] == b'\n' {
                self.bare_newline = true;
            } else {
                self.after_cr = true;
            }
            i = k + 1;
        }
    }

    /// At the last chunk: a trailing CR with nothing after it is bare too.
    pub fn finish(&mut self) -> (bool, bool) {
        (
            self.bare_newline || self.after_cr,
            self.long_line || self.line_bytes > LINE_BYTES_MAX,
        )
    }
}

/// Undoes dot-stuffing: the content as the sender meant it, from the queue's wire form.
pub fn unstuff(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire.len());
    push_unstuffed(wire, &mut out);
    out
}

/// The length of `wire` once unstuffed: one octet less for every line that starts with a
/// dot (the wire form is clean CRLF text: a line starts after each LF).
pub fn unstuffed_len(wire: &[u8]) -> usize {
    let dots =
        usize::from(wire.first() == Some(&b'.')) + memchr::memmem::find_iter(wire, b"\n.").count();
    wire.len() - dots
}

/// Appends `wire` unstuffed to `out`, whole spans between the stuffing dots at a time.
pub fn push_unstuffed(wire: &[u8], out: &mut Vec<u8>) {
    out.reserve(wire.len());
    let mut from = usize::from(wire.first() == Some(&b'.'));
    for lf in memchr::memmem::find_iter(wire, b"\n.") {
        out.extend_from_slice(&wire[from..=lf]);
        // The dot after the LF is the stuffing one.
        from = lf + 2;
    }
    out.extend_from_slice(&wire[from..]);
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
    fn bdat_chunks_checked_and_stuffed() {
        let mut c = ChunkCheck::default();
        let mut out = Vec::new();
        c.feed(b"a\r", &mut out);
        c.feed(b"\n.b\r\n", &mut out);
        c.feed(b".", &mut out);
        c.feed(b"c\r\n", &mut out);
        assert_eq!(c.finish(), (false, false));
        assert_eq!(out, b"a\r\n..b\r\n..c\r\n");
        assert_eq!(unstuff(&out), b"a\r\n.b\r\n.c\r\n");
        for bad in [&b"a\nb"[..], b"a\rb", b"a\r"] {
            let mut c = ChunkCheck::default();
            c.feed(bad, &mut Vec::new());
            assert!(c.finish().0, "{bad:?}");
        }
        let mut c = ChunkCheck::default();
        c.feed(&[b'x'; 999], &mut Vec::new());
        c.feed(b"\r\n", &mut Vec::new());
        assert!(c.finish().1);
    }

    #[test]
    fn wire_form_and_long_lines() {
        let mut s = DataScanner::wire_form(1 << 20);
        let mut out = Vec::new();
        let (_, end) = s.feed(b"a\r\n..b\r\n.\r\n", &mut out);
        assert_eq!(out, b"a\r\n..b\r\n");
        assert!(!end.unwrap().long_line);
        let mut line = vec![b'y'; 998];
        line.extend_from_slice(b"\r\n.\r\n");
        let mut s = DataScanner::new(1 << 20);
        assert!(!s.feed(&line, &mut Vec::new()).1.unwrap().long_line);
        let mut line = vec![b'y'; 999];
        line.extend_from_slice(b"\r\n.\r\n");
        let mut s = DataScanner::new(1 << 20);
        assert!(s.feed(&line, &mut Vec::new()).1.unwrap().long_line);
    }

    #[test]
    fn unstuffing_by_spans_matches_the_octet_rule() {
        // The rule: a dot right after LF (or at the start) is dropped, nothing else.
        let reference = |wire: &[u8]| -> Vec<u8> {
            let mut out = Vec::new();
            let mut at_line_start = true;
            for &b in wire {
                if !(at_line_start && b == b'.') {
                    out.push(b);
                }
                at_line_start = b == b'\n';
            }
            out
        };
        let cases: [&[u8]; 9] = [
            b"",
            b".",
            b"..",
            b"...\r\n",
            b"a\r\n..b\r\n..c\r\n",
            b"..x\r\n.\r\n..\r\n",
            b"no dots at all\r\nsecond line.\r\n",
            b"a.b\r\n\r\n..\r\n...\r\nend",
            b"\n.\n.\n..",
        ];
        for wire in cases {
            let mut out = b"kept".to_vec();
            push_unstuffed(wire, &mut out);
            assert_eq!(&out[4..], &reference(wire)[..], "{wire:?}");
            assert_eq!(unstuffed_len(wire), reference(wire).len(), "{wire:?}");
        }
    }

    #[test]
    fn received_count() {
        let m =
            b"Received: a\r\nreceived: b\r\n\tcont\r\nSubject: x\r\n\r\nReceived: not a header\r\n";
        assert_eq!(count_received(m), 2);
    }
}
