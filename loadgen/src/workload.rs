//! What `loadgen send` sends: seeded, reproducible workloads.
//!
//! Every message carries `X-Loadgen-Id` (unique in the run) and `X-Loadgen-Checksum` (the
//! crc32c of its body, after the blank line), so a sink downstream of a relay can prove
//! that each message arrived once and intact whatever headers the relay added.

use std::fmt::Write as _;

pub const ID_HEADER: &str = "X-Loadgen-Id";
pub const CHECKSUM_HEADER: &str = "X-Loadgen-Checksum";
/// Body lines are this long (plus CRLF), like base64 content.
const LINE_BYTES: usize = 76;
/// What `headers` adds, about: `--size` counts the whole message, so bodies are this much
/// smaller.
const HEADER_BYTES_ESTIMATE: usize = 200;

/// SplitMix64: tiny, fast, and good enough for choosing sizes and domains.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// A weighted choice: `value:weight` entries, weights in any unit.
#[derive(Debug, Clone)]
pub struct Weighted<T> {
    entries: Vec<(T, u64)>,
    total: u64,
}

impl<T: Clone> Weighted<T> {
    pub fn new(entries: Vec<(T, u64)>) -> Result<Weighted<T>, String> {
        let total = entries.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return Err("weights add up to zero".into());
        }
        Ok(Weighted { entries, total })
    }

    pub fn pick(&self, rng: &mut Rng) -> &T {
        let mut x = rng.below(self.total);
        for (v, w) in &self.entries {
            if x < *w {
                return v;
            }
            x -= w;
        }
        &self.entries[self.entries.len() - 1].0
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(v, _)| v)
    }
}

/// "512", "1k", "10k", "1m" (binary units: k = 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1024),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    digits
        .parse::<usize>()
        .map(|n| n * mult)
        .map_err(|_| format!("bad size {s:?} (e.g. 1k, 10k, 1m)"))
}

/// "1k" or "1k:70,10k:25,100k:5".
pub fn parse_size_mix(s: &str) -> Result<Weighted<usize>, String> {
    let mut entries = Vec::new();
    for part in s.split(',') {
        let (size, weight) = match part.split_once(':') {
            Some((size, w)) => (
                size,
                w.parse::<u64>()
                    .map_err(|_| format!("bad weight in {part:?}"))?,
            ),
            None => (part, 1),
        };
        entries.push((parse_size(size)?, weight));
    }
    Weighted::new(entries)
}

/// "domain" or "domain:weight".
pub fn parse_domain(s: &str) -> Result<(String, u64), String> {
    match s.split_once(':') {
        Some((d, w)) => Ok((
            d.to_string(),
            w.parse().map_err(|_| format!("bad weight in {s:?}"))?,
        )),
        None => Ok((s.to_string(), 1)),
    }
}

/// A body for a message of about `size` octets (headers included), CRLF lines, never a
/// line starting with "." (so it is sent as is).
pub struct Body {
    pub bytes: Vec<u8>,
    pub checksum: u32,
}

pub fn make_body(size: usize, rng: &mut Rng) -> Body {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let target = size
        .saturating_sub(HEADER_BYTES_ESTIMATE)
        .max(LINE_BYTES + 2);
    let mut bytes = Vec::with_capacity(target + LINE_BYTES);
    while bytes.len() + LINE_BYTES + 2 <= target {
        for _ in 0..LINE_BYTES {
            bytes.push(ALPHABET[rng.below(ALPHABET.len() as u64) as usize]);
        }
        bytes.extend_from_slice(b"\r\n");
    }
    let checksum = crc32c::crc32c(&bytes);
    Body { bytes, checksum }
}

/// The header block of one message (ending with the blank line).
pub fn headers(out: &mut Vec<u8>, id: &str, from: &str, to: &str, checksum: u32) {
    let mut h = String::with_capacity(256);
    let _ = write!(
        h,
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: loadgen {id}\r\nMessage-ID: <{id}@loadgen.test>\r\n{ID_HEADER}: {id}\r\n{CHECKSUM_HEADER}: {checksum:08x}\r\n\r\n"
    );
    out.extend_from_slice(h.as_bytes());
}

/// What a sink finds in a received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    /// Carries loadgen headers and the body matches its checksum.
    Intact(String),
    /// Carries loadgen headers but the body does not match.
    Corrupted(String),
    /// No loadgen headers: not ours.
    Foreign,
}

/// Checks a message as received (unstuffed, any headers a relay added included).
pub fn verify(message: &[u8]) -> Integrity {
    let split = memchr::memmem::find(message, b"\r\n\r\n");
    let (head, body) = match split {
        Some(at) => (&message[..at + 2], &message[at + 4..]),
        None => return Integrity::Foreign,
    };
    let mut id = None;
    let mut sum = None;
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(v) = header_value(line, ID_HEADER) {
            id = Some(v.to_string());
        } else if let Some(v) = header_value(line, CHECKSUM_HEADER) {
            sum = u32::from_str_radix(v, 16).ok();
        }
    }
    match (id, sum) {
        (Some(id), Some(sum)) if crc32c::crc32c(body) == sum => Integrity::Intact(id),
        (Some(id), _) => Integrity::Corrupted(id),
        _ => Integrity::Foreign,
    }
}

fn header_value<'a>(line: &'a [u8], name: &str) -> Option<&'a str> {
    let n = name.len();
    if line.len() > n + 1 && line[..n].eq_ignore_ascii_case(name.as_bytes()) && line[n] == b':' {
        std::str::from_utf8(&line[n + 1..]).ok().map(str::trim)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("2m"), Ok(2 * 1024 * 1024));
        assert!(parse_size("x").is_err());
        let mix = parse_size_mix("1k:70,10k:25,100k:5").unwrap();
        let mut rng = Rng::new(1);
        let mut counts = [0; 3];
        for _ in 0..10_000 {
            match *mix.pick(&mut rng) {
                1024 => counts[0] += 1,
                10240 => counts[1] += 1,
                _ => counts[2] += 1,
            }
        }
        assert!(
            (6500..7500).contains(&counts[0]) && (2000..3000).contains(&counts[1]),
            "{counts:?}"
        );
    }

    #[test]
    fn seeded_is_reproducible() {
        let a: Vec<u64> = (0..5)
            .scan(Rng::new(42), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..5)
            .scan(Rng::new(42), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn integrity() {
        let mut rng = Rng::new(7);
        let body = make_body(1024, &mut rng);
        let mut msg = b"Received: by a relay\r\n".to_vec();
        headers(&mut msg, "s-1", "a@b.test", "c@d.test", body.checksum);
        msg.extend_from_slice(&body.bytes);
        assert_eq!(verify(&msg), Integrity::Intact("s-1".into()));
        let last = msg.len() - 3;
        msg[last] ^= 1;
        assert_eq!(verify(&msg), Integrity::Corrupted("s-1".into()));
        assert_eq!(verify(b"Subject: x\r\n\r\nbody\r\n"), Integrity::Foreign);
    }
}
