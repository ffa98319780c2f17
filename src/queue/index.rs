//! The in-memory index of live messages and the segment reference counts that decide
//! when a segment file may be deleted.
//!
//! A segment holds message records ("homes") and outcome records. It may go when
//! (a) no unfinished message has its home there, and (b) no outcome record in it belongs
//! to a message whose home segment still exists: otherwise, after a restart, that message
//! would be found without its outcomes and delivered again. So when a message finishes we
//! remember which segments hold its outcomes until its home segment is deleted.

use super::record::{Outcome, OutcomeKind, QueueId, StoredMessage};
use std::collections::{BTreeMap, HashMap};

/// A segment's slot in the shard's segment table.
pub type SegId = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptState {
    Pending,
    Deferred { until_micros: u64 },
    Delivered,
    Failed,
}

impl RcptState {
    pub fn is_final(self) -> bool {
        matches!(self, RcptState::Delivered | RcptState::Failed)
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub message: StoredMessage,
    pub home: SegId,
    /// Offset of the record in its segment; the content is at `offset + content_at`.
    pub offset: u64,
    pub rcpt_states: Vec<RcptState>,
    pub last_reply: Option<String>,
    /// On hold by the operator: not delivered until released.
    pub held: bool,
    /// Segments other than `home` holding outcome records of this message.
    outcome_segs: Vec<SegId>,
}

impl Entry {
    pub fn content_offset(&self) -> u64 {
        self.offset + self.message.content_at as u64
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct SegRefs {
    homes: u32,
    outcome_refs: u32,
}

#[derive(Debug, Default)]
pub struct Index {
    live: HashMap<QueueId, Entry>,
    segs: BTreeMap<SegId, SegRefs>,
    /// For finished messages whose home segment still exists: home -> outcome segments.
    finished_outcomes: HashMap<SegId, Vec<SegId>>,
    /// The segment being appended to: never deleted.
    active: Option<SegId>,
}

impl Index {
    pub fn add_segment(&mut self, seg: SegId) {
        self.segs.entry(seg).or_default();
    }

    pub fn set_active(&mut self, seg: Option<SegId>) {
        if let Some(s) = seg {
            self.add_segment(s);
        }
        self.active = seg;
    }

    pub fn insert(&mut self, message: StoredMessage, home: SegId, offset: u64) {
        let n = message.envelope.recipients.len();
        self.segs.entry(home).or_default().homes += 1;
        let entry = Entry {
            message,
            home,
            offset,
            rcpt_states: vec![RcptState::Pending; n],
            last_reply: None,
            held: false,
            outcome_segs: Vec::new(),
        };
        if let Some(old) = self.live.insert(entry.message.id, entry) {
            // The same id twice means a bug upstream; keep the counts right regardless.
            if let Some(r) = self.segs.get_mut(&old.home) {
                r.homes -= 1;
            }
        }
    }

    /// Applies an outcome written in segment `seg`. Returns true when it finished the
    /// message. Outcomes for unknown (already finished) messages are ignored.
    pub fn apply(&mut self, o: &Outcome, seg: SegId) -> bool {
        let Some(entry) = self.live.get_mut(&o.id) else {
            return false;
        };
        if matches!(
            o.kind,
            OutcomeKind::Held | OutcomeKind::Released | OutcomeKind::Deleted
        ) {
            // Message-wide operator records; like outcomes, their segment must outlive
            // the message's home, or a restart would forget them.
            if seg != entry.home && !entry.outcome_segs.contains(&seg) {
                entry.outcome_segs.push(seg);
                self.segs.entry(seg).or_default().outcome_refs += 1;
            }
            match o.kind {
                OutcomeKind::Held => entry.held = true,
                OutcomeKind::Released => entry.held = false,
                _ => return self.finish(o.id),
            }
            return false;
        }
        let Some(state) = entry.rcpt_states.get_mut(o.rcpt as usize) else {
            return false;
        };
        if state.is_final() {
            return false;
        }
        *state = match o.kind {
            OutcomeKind::Delivered => RcptState::Delivered,
            OutcomeKind::Failed => RcptState::Failed,
            OutcomeKind::Deferred => RcptState::Deferred {
                until_micros: o.at_micros,
            },
            OutcomeKind::Held | OutcomeKind::Released | OutcomeKind::Deleted => return false,
        };
        entry.last_reply = Some(o.reply.clone());
        if seg != entry.home && !entry.outcome_segs.contains(&seg) {
            entry.outcome_segs.push(seg);
            self.segs.entry(seg).or_default().outcome_refs += 1;
        }
        if !entry.rcpt_states.iter().all(|s| s.is_final()) {
            return false;
        }
        self.finish(o.id)
    }

    /// Removes a finished message; its segments' counts follow.
    fn finish(&mut self, id: QueueId) -> bool {
        let Some(done) = self.live.remove(&id) else {
            return false;
        };
        if let Some(r) = self.segs.get_mut(&done.home) {
            r.homes -= 1;
        }
        self.finished_outcomes
            .entry(done.home)
            .or_default()
            .extend(done.outcome_segs);
        true
    }

    pub fn get(&self, id: QueueId) -> Option<&Entry> {
        self.live.get(&id)
    }

    pub fn live(&self) -> impl Iterator<Item = &Entry> {
        self.live.values()
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    pub fn max_counter(&self, shard: usize) -> u64 {
        self.live
            .keys()
            .filter(|id| (id.0 >> QueueId::COUNTER_BITS) as usize == shard)
            .map(|id| id.counter())
            .max()
            .unwrap_or(0)
    }

    /// Segments that may be deleted now. The caller deletes the files, then calls
    /// [`Index::remove_segment`] for each, which may free more.
    pub fn deletable(&self) -> Vec<SegId> {
        self.segs
            .iter()
            .filter(|(seg, r)| r.homes == 0 && r.outcome_refs == 0 && Some(**seg) != self.active)
            .map(|(seg, _)| *seg)
            .collect()
    }

    pub fn remove_segment(&mut self, seg: SegId) {
        self.segs.remove(&seg);
        for out in self.finished_outcomes.remove(&seg).unwrap_or_default() {
            if let Some(r) = self.segs.get_mut(&out) {
                r.outcome_refs -= 1;
            }
        }
    }

    /// Deletes (in the index) everything deletable, cascading; returns what went.
    pub fn collect_garbage(&mut self) -> Vec<SegId> {
        let mut gone = Vec::new();
        loop {
            let now = self.deletable();
            if now.is_empty() {
                return gone;
            }
            for seg in now {
                self.remove_segment(seg);
                gone.push(seg);
            }
        }
    }

    pub fn segments(&self) -> impl Iterator<Item = SegId> + '_ {
        self.segs.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::session::{Envelope, Recipient};

    fn msg(counter: u64, rcpts: usize) -> StoredMessage {
        let recipients = (0..rcpts)
            .map(|i| Recipient {
                address: format!("r{i}@x.test"),
                orcpt: None,
                notify: None,
            })
            .collect();
        StoredMessage {
            id: QueueId::new(0, counter),
            arrival_micros: 0,
            client: String::new(),
            helo: String::new(),
            envelope: std::rc::Rc::new(Envelope {
                recipients,
                ..Envelope::default()
            }),
            content_at: 0,
            content_len: 0,
        }
    }

    fn outcome(counter: u64, rcpt: u32, kind: OutcomeKind) -> Outcome {
        Outcome {
            id: QueueId::new(0, counter),
            rcpt,
            kind,
            at_micros: 0,
            reply: String::new(),
        }
    }

    #[test]
    fn segment_freed_when_messages_finish() {
        let mut ix = Index::default();
        ix.add_segment(1);
        ix.set_active(Some(2));
        ix.insert(msg(1, 2), 1, 0);
        assert!(ix.collect_garbage().is_empty());
        assert!(!ix.apply(&outcome(1, 0, OutcomeKind::Delivered), 2));
        assert!(!ix.apply(&outcome(1, 1, OutcomeKind::Deferred), 2));
        assert!(ix.collect_garbage().is_empty());
        assert!(ix.apply(&outcome(1, 1, OutcomeKind::Failed), 2));
        assert_eq!(ix.collect_garbage(), vec![1]);
        assert!(ix.is_empty());
    }

    #[test]
    fn outcome_segment_outlives_home_of_its_message() {
        // m1 and m2 live in segment 1; m1's outcome is in segment 2. Segment 2 must stay
        // while segment 1 exists (m2 keeps it alive), or a restart would redeliver m1.
        let mut ix = Index::default();
        ix.add_segment(1);
        ix.add_segment(2);
        ix.set_active(Some(3));
        ix.insert(msg(1, 1), 1, 0);
        ix.insert(msg(2, 1), 1, 100);
        assert!(ix.apply(&outcome(1, 0, OutcomeKind::Delivered), 2));
        assert!(
            ix.collect_garbage().is_empty(),
            "segment 2 must wait for segment 1"
        );
        assert!(ix.apply(&outcome(2, 0, OutcomeKind::Delivered), 3));
        // Now segment 1 goes, which frees 2; 3 is active and stays.
        let mut gone = ix.collect_garbage();
        gone.sort_unstable();
        assert_eq!(gone, vec![1, 2]);
    }

    #[test]
    fn stale_outcomes_are_ignored() {
        let mut ix = Index::default();
        ix.insert(msg(1, 1), 1, 0);
        assert!(ix.apply(&outcome(1, 0, OutcomeKind::Delivered), 1));
        assert!(!ix.apply(&outcome(1, 0, OutcomeKind::Delivered), 1));
        assert!(!ix.apply(&outcome(9, 0, OutcomeKind::Delivered), 1));
        assert!(!ix.apply(&outcome(1, 7, OutcomeKind::Delivered), 1));
    }
}
