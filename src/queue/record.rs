//! The queue log's record codec: pure, no I/O.
//!
//! A record is `magic u32 | kind u8 | 0 u8 x3 | payload_len u32 | crc32c u32 | payload`,
//! little-endian, with the CRC over kind, length and payload. Records are packed back to
//! back. A reader also skips zeros up to the next 512-octet boundary where a record
//! should start: segments written with padded (O_DIRECT) commits stay readable.

use crate::smtp::parser::{Body, Ret};
use crate::smtp::session::{Envelope, Recipient};
use std::fmt;
use std::rc::Rc;

pub const MAGIC: u32 = 0x4C51_5052; // "RPQL" little-endian
pub const HEADER_BYTES: usize = 16;
/// The padding unit of segments written with O_DIRECT commits (still read).
pub const PAD_ALIGN_BYTES: usize = 512;
/// A record larger than this is corrupt, whatever its checksum says.
pub const RECORD_BYTES_MAX: usize = 1 << 31;

const KIND_MESSAGE: u8 = 1;
const KIND_OUTCOME: u8 = 2;

/// Queue ids: shard number in the top 8 bits, a per-shard counter below, seeded from the
/// clock at start and kept above every recovered id: unique across shards and restarts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u64);

impl QueueId {
    pub const COUNTER_BITS: u32 = 56;

    pub fn new(shard: usize, counter: u64) -> QueueId {
        QueueId(
            ((shard as u64) << Self::COUNTER_BITS) | (counter & ((1 << Self::COUNTER_BITS) - 1)),
        )
    }

    pub fn counter(self) -> u64 {
        self.0 & ((1 << Self::COUNTER_BITS) - 1)
    }

    /// Always 16 uppercase hex digits, so the id is a fixed-width token.
    pub fn write_hex(self, out: &mut [u8; 16]) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        for (i, b) in out.iter_mut().enumerate() {
            *b = HEX[((self.0 >> (60 - 4 * i)) & 0xF) as usize];
        }
    }

    pub fn parse(text: &str) -> Option<QueueId> {
        (text.len() == 16)
            .then(|| u64::from_str_radix(text, 16).ok().map(QueueId))
            .flatten()
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

impl fmt::Debug for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// What the session knows about a message, borrowed for encoding. The content is kept in
/// wire form (dot-stuffed CRLF lines, without the final ".CRLF"), so delivery sends it
/// from the log as it is.
pub struct NewMessage<'a> {
    pub id: QueueId,
    pub arrival_micros: u64,
    pub client: &'a str,
    pub helo: &'a str,
    /// Handed over: the index keeps it as the stored message's envelope, without a copy.
    pub envelope: Rc<Envelope>,
    /// Our Received header, stored in front of the content.
    pub received: &'a [u8],
    pub content: &'a [u8],
}

/// A message record read back from the log. The content stays in the log; `content_at`
/// is its offset from the start of the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: QueueId,
    pub arrival_micros: u64,
    pub client: String,
    pub helo: String,
    /// Shared: delivery reports and snapshots hold it without copying every recipient.
    pub envelope: Rc<Envelope>,
    pub content_at: usize,
    pub content_len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    Delivered,
    Failed,
    /// Not delivered yet; `at_micros` is the next attempt.
    Deferred,
    /// The operator put the whole message on hold (`rcpt` unused): no delivery.
    Held,
    /// The operator released it.
    Released,
    /// The operator deleted it: finished, without a bounce.
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub id: QueueId,
    pub rcpt: u32,
    pub kind: OutcomeKind,
    pub at_micros: u64,
    /// The remote reply or our diagnostic, for logs and DSNs.
    pub reply: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Message(StoredMessage),
    Outcome(Outcome),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer ends inside the record: a torn tail.
    Truncated,
    BadMagic,
    BadChecksum,
    /// The checksum matched but the payload does not parse: written by a newer version,
    /// or a bug. Never silently skipped.
    Malformed,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecodeError::Truncated => "record cut short",
            DecodeError::BadMagic => "no record magic",
            DecodeError::BadChecksum => "checksum mismatch",
            DecodeError::Malformed => "malformed payload",
        })
    }
}

fn begin(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(&[0; 8]); // length and checksum, patched by `finish`
    start
}

fn finish(out: &mut [u8], start: usize) {
    let payload_len = (out.len() - start - HEADER_BYTES) as u32;
    out[start + 8..start + 12].copy_from_slice(&payload_len.to_le_bytes());
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&out[start + 4..start + 12]),
        &out[start + HEADER_BYTES..],
    );
    out[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s);
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.push(1);
            put_str(out, s.as_bytes());
        }
        None => out.push(0),
    }
}

/// Appends a message record to `out`; returns the record's offset within `out`.
pub fn encode_message(out: &mut Vec<u8>, m: &NewMessage<'_>) -> usize {
    let e = &*m.envelope;
    let start = begin(out, KIND_MESSAGE);
    out.extend_from_slice(&m.id.0.to_le_bytes());
    out.extend_from_slice(&m.arrival_micros.to_le_bytes());
    put_str(out, m.client.as_bytes());
    put_str(out, m.helo.as_bytes());
    put_str(out, e.sender.as_bytes());
    out.push(match e.body {
        None => 0,
        Some(Body::SevenBit) => 1,
        Some(Body::EightBitMime) => 2,
    });
    out.push(u8::from(e.smtputf8) | (u8::from(e.eight_bit) << 1));
    out.push(match e.ret {
        None => 0,
        Some(Ret::Full) => 1,
        Some(Ret::Hdrs) => 2,
    });
    put_opt_str(out, e.envid.as_deref());
    out.extend_from_slice(&(e.recipients.len() as u32).to_le_bytes());
    for r in &e.recipients {
        put_str(out, r.address.as_bytes());
        put_opt_str(out, r.orcpt.as_deref());
        out.push(r.notify.unwrap_or(0xFF));
    }
    out.extend_from_slice(&((m.received.len() + m.content.len()) as u64).to_le_bytes());
    out.extend_from_slice(m.received);
    out.extend_from_slice(m.content);
    finish(out, start);
    start
}

/// Appends an outcome record to `out`.
pub fn encode_outcome(out: &mut Vec<u8>, o: &Outcome) {
    let start = begin(out, KIND_OUTCOME);
    out.extend_from_slice(&o.id.0.to_le_bytes());
    out.extend_from_slice(&o.rcpt.to_le_bytes());
    out.push(match o.kind {
        OutcomeKind::Delivered => 1,
        OutcomeKind::Failed => 2,
        OutcomeKind::Deferred => 3,
        OutcomeKind::Held => 4,
        OutcomeKind::Released => 5,
        OutcomeKind::Deleted => 6,
    });
    out.extend_from_slice(&o.at_micros.to_le_bytes());
    put_str(out, o.reply.as_bytes());
    finish(out, start);
}

/// Reads the record at the start of `buf`; returns it and its length in octets.
pub fn decode(buf: &[u8]) -> Result<(Record, usize), DecodeError> {
    if buf.len() < HEADER_BYTES {
        return Err(if buf.len() >= 4 && buf[..4] != MAGIC.to_le_bytes() {
            DecodeError::BadMagic
        } else {
            DecodeError::Truncated
        });
    }
    if buf[..4] != MAGIC.to_le_bytes() {
        return Err(DecodeError::BadMagic);
    }
    let kind = buf[4];
    let len = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    if len > RECORD_BYTES_MAX {
        return Err(DecodeError::BadChecksum);
    }
    let total = HEADER_BYTES + len;
    if buf.len() < total {
        return Err(DecodeError::Truncated);
    }
    let crc = u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]);
    if crc32c::crc32c_append(crc32c::crc32c(&buf[4..12]), &buf[HEADER_BYTES..total]) != crc {
        return Err(DecodeError::BadChecksum);
    }
    let mut r = Reader {
        buf: &buf[..total],
        at: HEADER_BYTES,
    };
    let record = match kind {
        KIND_MESSAGE => Record::Message(r.message().ok_or(DecodeError::Malformed)?),
        KIND_OUTCOME => Record::Outcome(r.outcome().ok_or(DecodeError::Malformed)?),
        _ => return Err(DecodeError::Malformed),
    };
    if r.at != total {
        return Err(DecodeError::Malformed);
    }
    Ok((record, total))
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.buf.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    fn opt_string(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.string()?)),
            _ => None,
        }
    }

    fn message(&mut self) -> Option<StoredMessage> {
        let id = QueueId(self.u64()?);
        let arrival_micros = self.u64()?;
        let client = self.string()?;
        let helo = self.string()?;
        let sender = self.string()?;
        let body = match self.u8()? {
            0 => None,
            1 => Some(Body::SevenBit),
            2 => Some(Body::EightBitMime),
            _ => return None,
        };
        let flags = self.u8()?;
        if flags > 3 {
            return None;
        }
        let (smtputf8, eight_bit) = (flags & 1 != 0, flags & 2 != 0);
        let ret = match self.u8()? {
            0 => None,
            1 => Some(Ret::Full),
            2 => Some(Ret::Hdrs),
            _ => return None,
        };
        let envid = self.opt_string()?;
        let n = self.u32()? as usize;
        // Each recipient takes at least 10 octets: bound the allocation by the record.
        if n > self.buf.len() / 10 {
            return None;
        }
        let mut recipients = Vec::with_capacity(n);
        for _ in 0..n {
            let address = self.string()?;
            let orcpt = self.opt_string()?;
            let notify = Some(self.u8()?).filter(|&n| n != 0xFF);
            recipients.push(Recipient {
                address,
                orcpt,
                notify,
            });
        }
        let content_len = self.u64()?;
        let content_at = self.at;
        self.take(usize::try_from(content_len).ok()?)?;
        let envelope = Envelope {
            sender,
            body,
            smtputf8,
            ret,
            envid,
            recipients,
            eight_bit,
        };
        Some(StoredMessage {
            id,
            arrival_micros,
            client,
            helo,
            envelope: Rc::new(envelope),
            content_at,
            content_len,
        })
    }

    fn outcome(&mut self) -> Option<Outcome> {
        let id = QueueId(self.u64()?);
        let rcpt = self.u32()?;
        let kind = match self.u8()? {
            1 => OutcomeKind::Delivered,
            2 => OutcomeKind::Failed,
            3 => OutcomeKind::Deferred,
            4 => OutcomeKind::Held,
            5 => OutcomeKind::Released,
            6 => OutcomeKind::Deleted,
            _ => return None,
        };
        let at_micros = self.u64()?;
        let reply = self.string()?;
        Some(Outcome {
            id,
            rcpt,
            kind,
            at_micros,
            reply,
        })
    }
}

/// Pads `out` with zeros to a multiple of `align` (a power of two).
pub fn pad_to(out: &mut Vec<u8>, align: usize) {
    debug_assert!(align.is_power_of_two());
    let padded = (out.len() + align - 1) & !(align - 1);
    out.resize(padded, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_envelope() -> Envelope {
        Envelope {
            sender: "a@b.test".into(),
            body: Some(Body::EightBitMime),
            smtputf8: false,
            ret: Some(Ret::Hdrs),
            envid: Some("QQ+2B1".into()),
            eight_bit: true,
            recipients: vec![
                Recipient {
                    address: "c@d.test".into(),
                    orcpt: Some("rfc822;c@d.test".into()),
                    notify: Some(3),
                },
                Recipient {
                    address: "e@f.test".into(),
                    orcpt: None,
                    notify: None,
                },
            ],
        }
    }

    fn encode_sample(out: &mut Vec<u8>) {
        let env = sample_envelope();
        encode_message(
            out,
            &NewMessage {
                id: QueueId::new(1, 42),
                arrival_micros: 7,
                client: "127.0.0.1",
                helo: "client.test",
                envelope: Rc::new(env.clone()),
                received: b"Received: x\r\n",
                content: b"Subject: hi\r\n\r\nbody\r\n",
            },
        );
    }

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        encode_sample(&mut buf);
        let outcome = Outcome {
            id: QueueId::new(1, 42),
            rcpt: 1,
            kind: OutcomeKind::Deferred,
            at_micros: 99,
            reply: "451 4.3.0 try later".into(),
        };
        encode_outcome(&mut buf, &outcome);
        let (rec, n) = decode(&buf).unwrap();
        let Record::Message(m) = rec else { panic!() };
        assert_eq!(m.id, QueueId::new(1, 42));
        assert_eq!(m.envelope.recipients, sample_envelope().recipients);
        assert_eq!(m.envelope.envid.as_deref(), Some("QQ+2B1"));
        assert_eq!(
            &buf[m.content_at..m.content_at + m.content_len as usize],
            b"Received: x\r\nSubject: hi\r\n\r\nbody\r\n"
        );
        let (rec, n2) = decode(&buf[n..]).unwrap();
        assert_eq!(rec, Record::Outcome(outcome));
        assert_eq!(n + n2, buf.len());
    }

    #[test]
    fn every_corruption_is_detected() {
        let mut clean = Vec::new();
        encode_sample(&mut clean);
        for i in 0..clean.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = clean.clone();
                bad[i] ^= bit;
                assert!(decode(&bad).is_err(), "flip at {i} not detected");
            }
        }
        for cut in 0..clean.len() {
            assert!(decode(&clean[..cut]).is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn ids() {
        let id = QueueId::new(3, 0x1234);
        assert_eq!(id.to_string(), "0300000000001234");
        let mut hex = [0; 16];
        id.write_hex(&mut hex);
        assert_eq!(&hex, b"0300000000001234");
        assert_eq!(QueueId::parse("0300000000001234"), Some(id));
        assert_eq!(QueueId::parse("03"), None);
        assert_eq!(id.counter(), 0x1234);
    }

    #[test]
    fn padding() {
        let mut v = vec![1; 513];
        pad_to(&mut v, 512);
        assert_eq!(v.len(), 1024);
        pad_to(&mut v, 512);
        assert_eq!(v.len(), 1024);
    }
}
