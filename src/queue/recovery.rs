//! Reading a shard's queue back at start: scan every segment in order, stop at a torn or
//! corrupt tail (and say so), rebuild the index of live messages. Synchronous and run
//! before the shard serves, so plain blocking reads are the right tool.

use super::index::{Index, SegId};
use super::record::{self, DecodeError, Outcome, Record, PAD_ALIGN_BYTES};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub const SEGMENT_SUFFIX: &str = ".seg";
/// A long recovery says how far it got this often.
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The segment file name for a number: fixed width, so names sort like numbers.
pub fn segment_name(number: u64) -> String {
    format!("{number:016}{SEGMENT_SUFFIX}")
}

pub fn shard_dir(queue_dir: &Path, shard: usize) -> PathBuf {
    queue_dir.join(format!("shard-{shard}"))
}

/// The `shard-K` directories under a queue directory, by K.
pub fn shard_dirs(queue_dir: &Path) -> io::Result<Vec<(usize, PathBuf)>> {
    let mut dirs = Vec::new();
    match fs::read_dir(queue_dir) {
        Ok(entries) => {
            for e in entries {
                let e = e?;
                let name = e.file_name();
                let Some(k) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("shard-"))
                    .and_then(|k| k.parse().ok())
                else {
                    continue;
                };
                if e.file_type()?.is_dir() {
                    dirs.push((k, e.path()));
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    dirs.sort();
    Ok(dirs)
}

/// Segment files of one directory, by number.
pub fn segments_in(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segs = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|n| n.parse().ok())
        {
            segs.push((n, e.path()));
        }
    }
    segs.sort();
    Ok(segs)
}

/// A problem found in a segment: where, and what.
#[derive(Debug, Clone)]
pub struct TornTail {
    pub path: PathBuf,
    pub offset: u64,
    pub ignored_bytes: u64,
    pub error: DecodeError,
}

#[derive(Debug, Default)]
pub struct Recovered {
    pub index: Index,
    /// Segment table: SegId -> file.
    pub segments: Vec<PathBuf>,
    /// Highest segment number seen in each directory scanned, for the writer.
    pub max_number: u64,
    pub message_records: u64,
    pub outcome_records: u64,
    pub bytes: u64,
    pub torn: Vec<TornTail>,
}

/// What one segment holds, in order.
pub struct SegmentScan {
    pub records: Vec<(u64, Record)>,
    /// Where the last good record ends: zeros after it (written ahead) are not data.
    pub end: u64,
    pub torn: Option<TornTail>,
}

/// Decodes every record of a segment image up to its end or its first bad record.
pub fn scan_segment(path: &Path, image: &[u8]) -> SegmentScan {
    let mut records = Vec::new();
    let mut at = 0usize;
    // The end of the last record: zeros after it (padding, or written ahead) are not data.
    let mut end = 0usize;
    while at < image.len() {
        match record::decode(&image[at..]) {
            Ok((rec, n)) => {
                records.push((at as u64, rec));
                at += n;
                end = at;
            }
            Err(DecodeError::BadMagic | DecodeError::Truncated) if is_padding(image, at) => {
                // Zeros to the next commit boundary, or to the end of what was written.
                at = next_boundary(at).min(image.len());
            }
            Err(error) => {
                let torn = TornTail {
                    path: path.to_path_buf(),
                    offset: at as u64,
                    ignored_bytes: (image.len() - at) as u64,
                    error,
                };
                return SegmentScan {
                    records,
                    end: at as u64,
                    torn: Some(torn),
                };
            }
        }
    }
    SegmentScan {
        records,
        end: end as u64,
        torn: None,
    }
}

fn next_boundary(at: usize) -> usize {
    (at / PAD_ALIGN_BYTES + 1) * PAD_ALIGN_BYTES
}

/// True when the image is zeros from `at` up to the next padding boundary (or its end).
fn is_padding(image: &[u8], at: usize) -> bool {
    let upto = next_boundary(at).min(image.len());
    image[at..upto].iter().all(|&b| b == 0)
}

/// Recovers the segments of `dirs` (each `shard-K` directory this shard owns).
/// With `delete`, segments left with nothing live are removed, as the server does.
pub fn recover(dirs: &[PathBuf], delete: bool) -> io::Result<Recovered> {
    let mut r = Recovered::default();
    let mut outcomes: Vec<(SegId, Outcome)> = Vec::new();
    let total: usize = dirs
        .iter()
        .map(|d| segments_in(d).map_or(0, |s| s.len()))
        .sum();
    let (started, mut reported, mut done) =
        (std::time::Instant::now(), std::time::Instant::now(), 0usize);
    for dir in dirs {
        for (number, path) in segments_in(dir)? {
            done += 1;
            if reported.elapsed() >= PROGRESS_INTERVAL {
                reported = std::time::Instant::now();
                let rate = (r.message_records + r.outcome_records) as f64
                    / started.elapsed().as_secs_f64();
                log::info!("recovery of {}: segment {done} of {total}, {} messages so far, {rate:.0} records/s", dir.display(), r.message_records);
                log::logger().flush();
            }
            r.max_number = r.max_number.max(number);
            let image = fs::read(&path)?;
            let seg = r.segments.len() as SegId;
            r.segments.push(path.clone());
            r.index.add_segment(seg);
            let scan = scan_segment(&path, &image);
            r.bytes += scan.end;
            for (offset, rec) in scan.records {
                match rec {
                    Record::Message(m) => {
                        r.message_records += 1;
                        r.index.insert(m, seg, offset);
                    }
                    Record::Outcome(o) => {
                        r.outcome_records += 1;
                        outcomes.push((seg, o));
                    }
                }
            }
            r.torn.extend(scan.torn);
        }
    }
    // Outcomes after all messages: an adopted directory's outcomes may be in another's
    // segments. Final states are sticky, so the order among outcomes does not matter.
    for (seg, o) in &outcomes {
        r.index.apply(o, *seg);
    }
    if delete {
        for seg in r.index.collect_garbage() {
            fs::remove_file(&r.segments[seg as usize])?;
        }
        for dir in dirs {
            sync_dir(dir)?;
        }
    }
    Ok(r)
}

/// Makes a directory's entries (created or removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::record::{
        encode_message, encode_outcome, pad_to, NewMessage, OutcomeKind, QueueId,
    };
    use crate::smtp::session::{Envelope, Recipient};

    fn envelope() -> Envelope {
        Envelope {
            sender: "s@x.test".into(),
            recipients: vec![Recipient {
                address: "r@y.test".into(),
                orcpt: None,
                notify: None,
            }],
            ..Envelope::default()
        }
    }

    fn message(out: &mut Vec<u8>, counter: u64, body: &[u8]) {
        let env = envelope();
        encode_message(
            out,
            &NewMessage {
                id: QueueId::new(0, counter),
                arrival_micros: 1,
                client: "127.0.0.1",
                helo: "h",
                envelope: std::rc::Rc::new(env.clone()),
                received: b"",
                content: body,
            },
        );
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("ringpost-recovery-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn commits_with_padding_and_a_torn_tail() {
        let mut img = Vec::new();
        message(&mut img, 1, b"one\r\n");
        message(&mut img, 2, b"two\r\n");
        pad_to(&mut img, 4096);
        message(&mut img, 3, b"three\r\n");
        pad_to(&mut img, 512);
        let good_end = img.len();
        message(&mut img, 4, b"four, torn\r\n");
        img.truncate(img.len() - 3);
        let scan = scan_segment(Path::new("x"), &img);
        assert_eq!(scan.records.len(), 3);
        let torn = scan.torn.unwrap();
        assert_eq!(torn.offset, good_end as u64);
        assert_eq!(torn.error, DecodeError::Truncated);
    }

    #[test]
    fn zeros_written_ahead_end_the_segment_cleanly() {
        let mut img = Vec::new();
        message(&mut img, 1, b"one\r\n");
        message(&mut img, 2, b"two\r\n");
        let end = img.len();
        img.resize(end + 256 * 1024, 0);
        let scan = scan_segment(Path::new("x"), &img);
        assert_eq!(scan.records.len(), 2);
        assert!(scan.torn.is_none());
        assert_eq!(scan.end, end as u64);
        // A record torn by a crash, with the zeros still after it, is a torn tail there.
        let mut img = img[..end].to_vec();
        message(&mut img, 3, b"three, torn\r\n");
        img.truncate(img.len() - 4);
        img.resize(end + 256 * 1024, 0);
        let scan = scan_segment(Path::new("x"), &img);
        assert_eq!(scan.records.len(), 2);
        assert_eq!(scan.torn.map(|t| t.offset), Some(end as u64));
    }

    #[test]
    fn corrupt_byte_stops_the_segment_there() {
        let mut img = Vec::new();
        message(&mut img, 1, b"one\r\n");
        let second = img.len();
        message(&mut img, 2, b"two\r\n");
        message(&mut img, 3, b"three\r\n");
        img[second + 20] ^= 0xFF;
        let scan = scan_segment(Path::new("x"), &img);
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.torn.unwrap().error, DecodeError::BadChecksum);
        // Garbage that is not zeros where a record should start is corruption too.
        let mut img = Vec::new();
        message(&mut img, 1, b"one\r\n");
        img.extend_from_slice(b"garbage");
        assert_eq!(
            scan_segment(Path::new("x"), &img).torn.unwrap().error,
            DecodeError::BadMagic
        );
    }

    #[test]
    fn recover_rebuilds_and_collects() {
        let dir = tmpdir("collect");
        let mut a = Vec::new();
        message(&mut a, 1, b"delivered\r\n");
        message(&mut a, 2, b"still queued\r\n");
        fs::write(dir.join(segment_name(1)), &a).unwrap();
        let mut b = Vec::new();
        message(&mut b, 3, b"delivered too\r\n");
        for c in [1, 3] {
            let o = crate::queue::record::Outcome {
                id: QueueId::new(0, c),
                rcpt: 0,
                kind: OutcomeKind::Delivered,
                at_micros: 0,
                reply: "250 ok".into(),
            };
            encode_outcome(&mut b, &o);
        }
        fs::write(dir.join(segment_name(2)), &b).unwrap();
        let r = recover(std::slice::from_ref(&dir), true).unwrap();
        assert_eq!(r.index.len(), 1);
        let live = r.index.get(QueueId::new(0, 2)).unwrap();
        assert_eq!(live.message.envelope.sender, "s@x.test");
        // Segment 2 holds the outcome of message 1, whose home (segment 1) lives on.
        assert!(dir.join(segment_name(1)).exists());
        assert!(dir.join(segment_name(2)).exists());
        assert_eq!(r.max_number, 2);
        fs::remove_dir_all(&dir).unwrap();
    }
}
