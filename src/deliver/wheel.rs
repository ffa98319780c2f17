//! A hashed timer wheel for retries: deferred recipients come back when their time comes,
//! without scanning the queue. One slot per `slot` of time; an item due beyond one turn
//! of the wheel waits in its slot for later turns (it is skipped until due).

use std::time::Duration;

pub struct TimerWheel<T> {
    slot_us: u64,
    slots: Vec<Vec<(u64, T)>>,
    /// The time up to which slots have been collected.
    now_us: u64,
    len: usize,
}

impl<T> TimerWheel<T> {
    pub fn new(slot: Duration, slots: usize, now_us: u64) -> TimerWheel<T> {
        let slot_us = (slot.as_micros() as u64).max(1);
        TimerWheel {
            slot_us,
            slots: (0..slots.max(1)).map(|_| Vec::new()).collect(),
            now_us,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn index(&self, at_us: u64) -> usize {
        ((at_us / self.slot_us) % self.slots.len() as u64) as usize
    }

    /// Schedules `item` at `due_us` (a time in the past fires on the next advance).
    pub fn insert(&mut self, due_us: u64, item: T) {
        let at = due_us.max(self.now_us);
        let i = self.index(at);
        self.slots[i].push((due_us, item));
        self.len += 1;
    }

    /// Moves time to `now_us` and returns everything due by then.
    pub fn advance(&mut self, now_us: u64, due: &mut Vec<T>) {
        if now_us < self.now_us {
            return;
        }
        let turns = (now_us / self.slot_us).saturating_sub(self.now_us / self.slot_us) as usize;
        let visit = (turns + 1).min(self.slots.len());
        let first = self.index(self.now_us);
        for k in 0..visit {
            let i = (first + k) % self.slots.len();
            let slot = &mut self.slots[i];
            let mut j = 0;
            while j < slot.len() {
                if slot[j].0 <= now_us {
                    due.push(slot.swap_remove(j).1);
                    self.len -= 1;
                } else {
                    j += 1;
                }
            }
        }
        self.now_us = now_us;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_on_time_across_turns() {
        let s = 1_000_000;
        let mut w = TimerWheel::new(Duration::from_secs(1), 8, 0);
        w.insert(3 * s, "three");
        w.insert(20 * s, "twenty"); // beyond one turn of 8 slots
        w.insert(0, "now");
        let mut due = Vec::new();
        w.advance(s, &mut due);
        assert_eq!(due, vec!["now"]);
        due.clear();
        w.advance(3 * s, &mut due);
        assert_eq!(due, vec!["three"]);
        due.clear();
        w.advance(12 * s, &mut due);
        assert!(due.is_empty(), "{due:?}");
        w.advance(19 * s, &mut due);
        assert!(due.is_empty());
        w.advance(20 * s + 5, &mut due);
        assert_eq!(due, vec!["twenty"]);
        assert!(w.is_empty());
        // A big jump visits every slot once.
        w.insert(25 * s, "late");
        w.advance(1000 * s, &mut due);
        assert_eq!(due.last(), Some(&"late"));
    }
}
