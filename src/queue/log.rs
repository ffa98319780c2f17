//! One shard's append-only queue log with group commit.
//!
//! Sessions append encoded records to a staging buffer and get a ticket. One committer
//! task per shard takes everything staged, writes it into the current segment (one write
//! per `commit_bytes_max`), runs one `fdatasync`, then
//! completes the ticket of every record in the batch. While a sync is in flight, new
//! appends pile up for the next one: under load the fsync cost is shared by the whole
//! batch, and at low load nobody waits for a timer. A session answers 250 only once its
//! ticket completes, so a 250 always means "on disk".

use super::index::{Index, SegId};
use super::record::{self, NewMessage, Outcome, QueueId, StoredMessage};
use super::recovery::{self, Recovered};
use crate::config::SyncMode;
use crate::shard::local::{Latch, Signal};
use crate::smtp::session::StoreError;
use glommio::io::{BufferedFile, OpenOptions};
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub segment_bytes: u64,
    pub commit_window: Duration,
    pub commit_bytes_max: usize,
    pub sync: SyncMode,
    pub zero_ahead_bytes: u64,
    /// How long outcome records alone wait for a message record to share a sync with.
    pub outcome_delay: Duration,
}

/// Zeros written ahead of the records come from here, this many octets per write call.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// The staging buffer starts each batch with at least this much room.
const STAGING_BYTES_MIN: usize = 64 * 1024;

/// Completes with the result of the commit that carried the record.
pub type Ticket = Rc<Latch<Result<(), StoreError>>>;

/// Counters for the operator (and the benchmark figures).
#[derive(Debug, Default, Clone, Copy)]
pub struct LogStats {
    pub commits: u64,
    pub records: u64,
    pub bytes: u64,
    pub sync_micros: u64,
    pub failed_commits: u64,
}

/// Latency of write + fdatasync per commit, microseconds (up to a minute).
pub fn sync_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds")
}

struct Active {
    seg: SegId,
    file: Rc<BufferedFile>,
    pos: u64,
    /// `[pos, zeroed)` holds written zeros (see `LogSettings::zero_ahead_bytes`).
    zeroed: u64,
}

struct State {
    staging: Vec<u8>,
    ticket: Ticket,
    /// Messages staged: offset in `staging` and what the index will hold.
    new_messages: Vec<(usize, StoredMessage)>,
    new_outcomes: Vec<Outcome>,
    active: Option<Active>,
    /// SegId -> file path.
    segments: Vec<PathBuf>,
    index: Index,
    next_number: u64,
    stats: LogStats,
    sync_us: hdrhistogram::Histogram<u64>,
    /// Records per commit.
    batch: hdrhistogram::Histogram<u64>,
}

pub struct Log {
    shard: usize,
    dir: PathBuf,
    settings: LogSettings,
    st: RefCell<State>,
    kick: Signal,
    closing: Cell<bool>,
    closed: Rc<Latch<()>>,
    next_counter: Cell<u64>,
}

/// What recovery found, for the start-up report.
#[derive(Debug)]
pub struct RecoveryReport {
    pub segments: usize,
    pub live_messages: usize,
    pub message_records: u64,
    pub outcome_records: u64,
    pub bytes: u64,
    pub torn: Vec<recovery::TornTail>,
    pub deleted_segments: usize,
    pub elapsed: Duration,
}

impl Log {
    /// Recovers the shard's directories (its own first, then any it adopts) and prepares
    /// to append to a new segment in its own directory. Blocking; call before serving.
    pub fn open(
        shard: usize,
        dirs: &[PathBuf],
        settings: LogSettings,
    ) -> io::Result<(Log, RecoveryReport)> {
        let started = std::time::Instant::now();
        let own = dirs
            .first()
            .ok_or_else(|| io::Error::other("no queue directory"))?
            .clone();
        std::fs::create_dir_all(&own)?;
        let before: usize = dirs
            .iter()
            .map(|d| recovery::segments_in(d).map_or(0, |s| s.len()))
            .sum();
        let Recovered {
            index,
            segments,
            max_number,
            message_records,
            outcome_records,
            bytes,
            torn,
        } = recovery::recover(dirs, true)?;
        let live: usize = index.len();
        let report = RecoveryReport {
            segments: before,
            live_messages: live,
            message_records,
            outcome_records,
            bytes,
            torn,
            deleted_segments: before - index.segments().count(),
            elapsed: started.elapsed(),
        };
        let counter = crate::time::unix_micros().max(index.max_counter(shard) + 1);
        let log = Log {
            shard,
            dir: own,
            settings,
            st: RefCell::new(State {
                staging: Vec::new(),
                ticket: Ticket::default(),
                new_messages: Vec::new(),
                new_outcomes: Vec::new(),
                active: None,
                segments,
                index,
                next_number: max_number + 1,
                stats: LogStats::default(),
                sync_us: sync_histogram(),
                batch: sync_histogram(),
            }),
            kick: Signal::default(),
            closing: Cell::new(false),
            closed: Rc::default(),
            next_counter: Cell::new(counter),
        };
        Ok((log, report))
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    pub fn next_id(&self) -> QueueId {
        let c = self.next_counter.get();
        self.next_counter.set(c + 1);
        QueueId::new(self.shard, c)
    }

    /// Stages a message record; the ticket completes when it is on disk.
    pub fn append_message(&self, m: &NewMessage<'_>) -> Ticket {
        let mut st = self.st.borrow_mut();
        let start = record::encode_message(&mut st.staging, m);
        let content_len = (m.received.len() + m.content.len()) as u64;
        let record_len = st.staging.len() - start;
        let stored = StoredMessage {
            id: m.id,
            arrival_micros: m.arrival_micros,
            client: m.client.to_string(),
            helo: m.helo.to_string(),
            envelope: Rc::clone(&m.envelope),
            content_at: record_len - content_len as usize,
            content_len,
        };
        st.new_messages.push((start, stored));
        self.staged(st)
    }

    /// Stages an outcome record; the index changes only once it is on disk.
    pub fn append_outcome(&self, o: Outcome) -> Ticket {
        self.append_outcomes(vec![o])
    }

    /// Stages outcome records together (one transaction's recipients): one ticket.
    pub fn append_outcomes(&self, os: Vec<Outcome>) -> Ticket {
        let mut st = self.st.borrow_mut();
        for o in &os {
            record::encode_outcome(&mut st.staging, o);
        }
        st.new_outcomes.extend(os);
        self.staged(st)
    }

    fn staged(&self, st: std::cell::RefMut<'_, State>) -> Ticket {
        let ticket = Rc::clone(&st.ticket);
        drop(st);
        self.kick.raise();
        ticket
    }

    pub fn with_index<R>(&self, f: impl FnOnce(&Index) -> R) -> R {
        f(&self.st.borrow().index)
    }

    /// The file of a segment, for readers of message content.
    pub fn segment_path(&self, seg: SegId) -> Option<PathBuf> {
        self.st.borrow().segments.get(seg as usize).cloned()
    }

    pub fn batch_histogram(&self) -> hdrhistogram::Histogram<u64> {
        self.st.borrow().batch.clone()
    }

    pub fn sync_histogram(&self) -> hdrhistogram::Histogram<u64> {
        self.st.borrow().sync_us.clone()
    }

    pub fn stats(&self) -> LogStats {
        self.st.borrow().stats
    }

    /// Commits until [`Log::close`] is called and everything staged is on disk.
    pub async fn run_committer(self: Rc<Self>) {
        loop {
            let empty = self.st.borrow().staging.is_empty();
            if empty {
                if self.closing.get() {
                    break;
                }
                self.kick.wait().await;
                continue;
            }
            self.wait_for_a_message().await;
            if !self.settings.commit_window.is_zero() && !self.closing.get() {
                glommio::timer::sleep(self.settings.commit_window).await;
            }
            self.commit_once().await;
        }
        if let Some(active) = self.st.borrow_mut().active.take() {
            drop(active.file);
        }
        self.closed.set(());
    }

    /// When only outcomes are staged, waits (up to `outcome_delay`) for a message record
    /// to commit them with. A sender waits for its message's sync; nobody waits for an
    /// outcome's: delivery has happened, and the record only keeps the message from being
    /// sent again after a crash. Under load a message comes within a sync or two and the
    /// outcomes cost no fdatasync of their own; when the relay only delivers, they are
    /// synced every `outcome_delay`. This is the window in which a crash repeats a
    /// delivery (Postfix's is the file system's: its unlink of a delivered queue file is
    /// not synced).
    async fn wait_for_a_message(&self) {
        let delay = self.settings.outcome_delay;
        if delay.is_zero() {
            return;
        }
        let deadline = std::time::Instant::now() + delay;
        loop {
            if self.closing.get() || !self.st.borrow().new_messages.is_empty() {
                return;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            futures_lite::future::or(self.kick.wait(), glommio::timer::sleep(left)).await;
        }
    }

    /// Stops accepting more work after what is staged, and waits until it is on disk.
    pub async fn close(&self) {
        self.closing.set(true);
        self.kick.raise();
        self.closed.wait().await;
    }

    async fn commit_once(&self) {
        let (bytes, ticket, messages, outcomes, records) = {
            let mut st = self.st.borrow_mut();
            // The batch is handed to the kernel by value; the next one starts with room for
            // as much as this one held.
            let room = st.staging.len().max(STAGING_BYTES_MIN);
            let bytes = std::mem::replace(&mut st.staging, Vec::with_capacity(room));
            let ticket = std::mem::take(&mut st.ticket);
            // Every staged record is a new message or a new outcome.
            let records = (st.new_messages.len() + st.new_outcomes.len()) as u64;
            (
                bytes,
                ticket,
                std::mem::take(&mut st.new_messages),
                std::mem::take(&mut st.new_outcomes),
                records,
            )
        };
        let len = bytes.len() as u64;
        let started = std::time::Instant::now();
        let result = self.write_and_sync(bytes).await;
        let finished = match result {
            Ok((seg, base)) => {
                let mut st = self.st.borrow_mut();
                st.stats.commits += 1;
                st.stats.records += records;
                st.stats.bytes += len;
                let us = started.elapsed().as_micros() as u64;
                st.stats.sync_micros += us;
                st.sync_us.saturating_record(us.max(1));
                st.batch.saturating_record(records.max(1));
                for (offset, m) in messages {
                    st.index.insert(m, seg, base + offset as u64);
                }
                let mut finished = false;
                for o in &outcomes {
                    finished |= st.index.apply(o, seg);
                }
                drop(st);
                ticket.set(Ok(()));
                finished
            }
            Err(e) => {
                {
                    let mut st = self.st.borrow_mut();
                    st.stats.failed_commits += 1;
                    // Whatever reached the segment is not trusted: start a new one.
                    st.active = None;
                }
                log::error!("shard {}: queue commit failed: {e}", self.shard);
                ticket.set(Err(classify(&e)));
                false
            }
        };
        if finished {
            self.delete_finished_segments().await;
        }
    }

    /// Writes one batch at the end of the current segment and syncs it. Through the page
    /// cache, not O_DIRECT: delivery reads the content back moments later, from memory.
    /// The write is a plain pwrite(2) on the shard's thread: a copy into the page cache
    /// (the segment's blocks are reserved, nothing is read), where a ring write would be
    /// punted to a worker thread that waits for the busy shard's core.
    async fn write_and_sync(&self, bytes: Vec<u8>) -> io::Result<(SegId, u64)> {
        let len = bytes.len();
        let (file, seg, base) = self.segment_for(len as u64).await?;
        self.zero_ahead(file.as_raw_fd(), base + len as u64)?;
        let mut chunk = bytes;
        let mut pos = base;
        while !chunk.is_empty() {
            let rest = if chunk.len() > self.settings.commit_bytes_max {
                chunk.split_off(self.settings.commit_bytes_max)
            } else {
                Vec::new()
            };
            let n = chunk.len();
            pwrite_all(file.as_raw_fd(), &chunk, pos)?;
            pos += n as u64;
            chunk = rest;
        }
        match self.settings.sync {
            // `auto` is resolved at start-up; inline is what it means on a fast disk.
            SyncMode::Inline | SyncMode::Auto => {
                // SAFETY: fdatasync(2) on the open segment; no memory is involved.
                if unsafe { libc::fdatasync(file.as_raw_fd()) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            SyncMode::Ring => file.fdatasync().await.map_err(io::Error::from)?,
        }
        if let Some(a) = self.st.borrow_mut().active.as_mut() {
            a.pos = base + len as u64;
        }
        Ok((seg, base))
    }

    /// Before a commit that ends at `end`: when that passes the zeros already written,
    /// writes `zero_ahead_bytes` of zeros after it (this commit's fdatasync makes them
    /// durable with the records). Only what follows the records is ever zeroed.
    fn zero_ahead(&self, fd: std::os::fd::RawFd, end: u64) -> io::Result<()> {
        let ahead = self.settings.zero_ahead_bytes;
        let (from, to) = {
            let st = self.st.borrow();
            let Some(a) = st.active.as_ref() else {
                return Ok(());
            };
            if ahead == 0 || end <= a.zeroed {
                return Ok(());
            }
            // The records of this commit cover [pos, end) themselves.
            let from = a.zeroed.max(end);
            (
                from,
                (end + ahead).min(self.settings.segment_bytes.max(end)),
            )
        };
        let mut at = from;
        while at < to {
            let n = (to - at).min(ZEROS.len() as u64) as usize;
            pwrite_all(fd, &ZEROS[..n], at)?;
            at += n as u64;
        }
        if let Some(a) = self.st.borrow_mut().active.as_mut() {
            a.zeroed = to;
        }
        Ok(())
    }

    /// The segment to write `len` more octets to: the current one, or a new one when it
    /// would grow past `segment_bytes`.
    async fn segment_for(&self, len: u64) -> io::Result<(Rc<BufferedFile>, SegId, u64)> {
        {
            let st = self.st.borrow();
            if let Some(a) = &st.active {
                if a.pos == 0 || a.pos + len <= self.settings.segment_bytes {
                    return Ok((Rc::clone(&a.file), a.seg, a.pos));
                }
            }
        }
        let (number, path) = {
            let mut st = self.st.borrow_mut();
            let n = st.next_number;
            st.next_number += 1;
            (n, self.dir.join(recovery::segment_name(n)))
        };
        let file = create_segment(&self.dir, &path, self.settings.segment_bytes).await?;
        let file = Rc::new(file);
        let seg = {
            let mut st = self.st.borrow_mut();
            let seg = st.segments.len() as SegId;
            st.segments.push(path);
            st.index.set_active(Some(seg));
            st.active = Some(Active {
                seg,
                file: Rc::clone(&file),
                pos: 0,
                zeroed: 0,
            });
            seg
        };
        log::debug!("shard {}: new queue segment {number}", self.shard);
        // The previous segment may have nothing live left.
        self.delete_finished_segments().await;
        Ok((file, seg, 0))
    }

    async fn delete_finished_segments(&self) {
        let paths: Vec<PathBuf> = {
            let mut st = self.st.borrow_mut();
            let gone = st.index.collect_garbage();
            gone.iter()
                .map(|&s| st.segments[s as usize].clone())
                .collect()
        };
        if paths.is_empty() {
            return;
        }
        for p in &paths {
            if let Err(e) = glommio::io::remove(p).await {
                log::warn!(
                    "shard {}: cannot delete finished segment {}: {e}",
                    self.shard,
                    p.display()
                );
            }
        }
        if let Err(e) = sync_dir(&self.dir).await {
            log::warn!(
                "shard {}: cannot sync {}: {e}",
                self.shard,
                self.dir.display()
            );
        }
    }
}

async fn create_segment(dir: &Path, path: &Path, segment_bytes: u64) -> io::Result<BufferedFile> {
    let file = OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .buffered_open(path)
        .await
        .map_err(io::Error::from)?;
    // Reserve the whole segment now, so that a full disk shows here (452) rather than
    // in the middle of a commit, and the file is not fragmented.
    if let Err(e) = file
        .pre_allocate(segment_bytes, true)
        .await
        .map_err(io::Error::from)
    {
        let _ = file.close().await;
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    // The new directory entry must be durable before any record in it is acknowledged.
    sync_dir(dir).await?;
    Ok(file)
}

/// fsync of a directory on the shard's blocking-thread pool: it is rare (segment create
/// and delete) and io_uring has no directory open that glommio exposes reliably.
async fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = dir.to_path_buf();
    glommio::executor()
        .spawn_blocking(move || recovery::sync_dir(&dir))
        .await
}

/// All of `buf` at `pos`, or an error (a write that makes no progress is `WriteZero`).
fn pwrite_all(fd: std::os::fd::RawFd, buf: &[u8], pos: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: buf is valid for its length; fd is the open segment.
        let r = unsafe {
            libc::pwrite(
                fd,
                buf[done..].as_ptr().cast(),
                buf.len() - done,
                (pos + done as u64) as libc::off_t,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to the queue log",
            ));
        }
        done += r as usize;
    }
    Ok(())
}

/// Disk full (or over quota) is 452; any other failure 451.
fn classify(e: &io::Error) -> StoreError {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    match e.raw_os_error() {
        Some(ENOSPC | EDQUOT) => StoreError::NoSpace,
        _ if e.kind() == io::ErrorKind::StorageFull => StoreError::NoSpace,
        _ => StoreError::Io,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::record::OutcomeKind;
    use crate::smtp::session::{Envelope, Recipient};
    use glommio::LocalExecutorBuilder;

    fn envelope(rcpts: usize) -> Envelope {
        Envelope {
            sender: "s@x.test".into(),
            recipients: (0..rcpts)
                .map(|i| Recipient {
                    address: format!("r{i}@y.test"),
                    orcpt: None,
                    notify: None,
                })
                .collect(),
            ..Envelope::default()
        }
    }

    fn segment_files(dir: &Path) -> usize {
        recovery::segments_in(dir).map_or(0, |s| s.len())
    }

    /// Appends, syncs, records outcomes, rolls segments and deletes finished ones, then
    /// checks that a fresh recovery sees exactly what is live.
    #[test]
    fn outcomes_finish_messages_and_segments_go() {
        let dir = std::env::temp_dir().join(format!("ringpost-log-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let shard_dir = dir.join("shard-0");
        let d = shard_dir.clone();
        LocalExecutorBuilder::default()
            .spawn(move || async move {
                let settings = LogSettings {
                    segment_bytes: 1024 * 1024,
                    commit_window: Duration::ZERO,
                    commit_bytes_max: 64 * 1024,
                    sync: SyncMode::Ring,
                    zero_ahead_bytes: 256 * 1024,
                    outcome_delay: Duration::ZERO,
                };
                let (log, report) = Log::open(0, std::slice::from_ref(&d), settings).expect("open");
                assert_eq!(report.live_messages, 0);
                let log = Rc::new(log);
                let committer = glommio::spawn_local(Rc::clone(&log).run_committer());
                // Enough content to fill more than one segment.
                let content = vec![b'x'; 200 * 1024];
                let env = envelope(2);
                let mut ids = Vec::new();
                for _ in 0..8 {
                    let id = log.next_id();
                    let t = log.append_message(&NewMessage {
                        id,
                        arrival_micros: 1,
                        client: "127.0.0.1",
                        helo: "h",
                        envelope: Rc::new(env.clone()),
                        received: b"Received: x\r\n",
                        content: &content,
                    });
                    assert_eq!(t.wait().await, Ok(()));
                    ids.push(id);
                }
                assert!(segment_files(&d) >= 2, "expected a roll");
                assert_eq!(log.with_index(|ix| ix.len()), 8);
                // Finish all but the last message; the old segments become garbage.
                for &id in &ids[..7] {
                    for rcpt in 0..2 {
                        let o = Outcome {
                            id,
                            rcpt,
                            kind: OutcomeKind::Delivered,
                            at_micros: 2,
                            reply: "250 ok".into(),
                        };
                        assert_eq!(log.append_outcome(o).wait().await, Ok(()));
                    }
                }
                let deferred = Outcome {
                    id: ids[7],
                    rcpt: 0,
                    kind: OutcomeKind::Deferred,
                    at_micros: 99,
                    reply: "451 later".into(),
                };
                assert_eq!(log.append_outcome(deferred).wait().await, Ok(()));
                assert_eq!(log.with_index(|ix| ix.len()), 1);
                log.close().await;
                committer.await;
                assert!(log.stats().commits >= 23);
            })
            .expect("executor")
            .join()
            .expect("join");
        // Only the segment with the live message (and the active one) remain.
        let r = recovery::recover(std::slice::from_ref(&shard_dir), false).expect("recover");
        assert_eq!(r.index.len(), 1);
        let live = r.index.live().next().expect("one live");
        assert_eq!(
            live.rcpt_states[0],
            crate::queue::index::RcptState::Deferred { until_micros: 99 }
        );
        assert_eq!(live.rcpt_states[1], crate::queue::index::RcptState::Pending);
        assert!(
            segment_files(&shard_dir) <= 2,
            "finished segments were not deleted"
        );
        // The last segment's records are followed by zeros written ahead, which recovery
        // neither reads as records nor counts as data.
        let (_, last) = recovery::segments_in(&shard_dir)
            .expect("list")
            .pop()
            .expect("a segment");
        let image = std::fs::read(&last).expect("read");
        let scan = recovery::scan_segment(&last, &image);
        assert!(scan.torn.is_none());
        assert!(
            image.len() as u64 > scan.end,
            "no zeros ahead of the records"
        );
        assert!(image[scan.end as usize..].iter().all(|&b| b == 0));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// Outcomes alone wait for a message to share its sync (or for `outcome_delay`); a
    /// message staged meanwhile takes them along in one commit; close flushes what waits.
    #[test]
    fn outcomes_ride_with_the_next_message() {
        let dir = std::env::temp_dir().join(format!("ringpost-log-delay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let d = dir.join("shard-0");
        LocalExecutorBuilder::default()
            .spawn(move || async move {
                let delay = Duration::from_millis(300);
                let settings = LogSettings {
                    segment_bytes: 1024 * 1024,
                    commit_window: Duration::ZERO,
                    commit_bytes_max: 64 * 1024,
                    sync: SyncMode::Inline,
                    zero_ahead_bytes: 0,
                    outcome_delay: delay,
                };
                let (log, _) = Log::open(0, std::slice::from_ref(&d), settings).expect("open");
                let log = Rc::new(log);
                let committer = glommio::spawn_local(Rc::clone(&log).run_committer());
                let env = Rc::new(envelope(1));
                let message = |id| NewMessage {
                    id,
                    arrival_micros: 1,
                    client: "127.0.0.1",
                    helo: "h",
                    envelope: Rc::clone(&env),
                    received: b"Received: x\r\n",
                    content: b"Subject: t\r\n\r\nbody\r\n",
                };
                let first = log.next_id();
                assert_eq!(log.append_message(&message(first)).wait().await, Ok(()));
                assert_eq!(log.stats().commits, 1);
                let outcome = |id, kind| Outcome {
                    id,
                    rcpt: 0,
                    kind,
                    at_micros: 2,
                    reply: "250 ok".into(),
                };
                // An outcome alone waits; a message staged meanwhile carries it.
                let waiting = log.append_outcome(outcome(first, OutcomeKind::Delivered));
                glommio::timer::sleep(Duration::from_millis(20)).await;
                assert_eq!(
                    log.stats().commits,
                    1,
                    "an outcome alone was synced at once"
                );
                let second = log.next_id();
                let carrier = log.append_message(&message(second));
                assert_eq!(carrier.wait().await, Ok(()));
                assert_eq!(waiting.get(), Some(Ok(())));
                assert_eq!(log.stats().commits, 2);
                assert_eq!(log.stats().records, 3);
                assert_eq!(log.with_index(|ix| ix.len()), 1);
                // With no message to ride with, it is synced after the delay.
                let started = std::time::Instant::now();
                let alone = log.append_outcome(outcome(second, OutcomeKind::Deferred));
                assert_eq!(alone.wait().await, Ok(()));
                assert!(started.elapsed() >= delay);
                assert_eq!(log.stats().commits, 3);
                // Closing does not wait out the delay.
                let started = std::time::Instant::now();
                let last = log.append_outcome(outcome(second, OutcomeKind::Delivered));
                log.close().await;
                committer.await;
                assert!(started.elapsed() < delay);
                assert_eq!(last.get(), Some(Ok(())));
                assert_eq!(log.with_index(|ix| ix.len()), 0);
            })
            .expect("executor")
            .join()
            .expect("join");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
