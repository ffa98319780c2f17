//! Session deadlines for one shard: one sweep a tick instead of a timer per read.
//!
//! A session arms its watch with a deadline before it waits for input and disarms it when
//! the read returns. The deadline belongs to the command (or, in message content, to the
//! transfer at a minimum rate), not to each read, so a client dribbling a byte at a time
//! gets no more time than one sending the line at once: Postfix's
//! `smtpd_per_record_deadline` and `smtpd_min_data_rate`, as a default.
//!
//! When a deadline passes, the sweep shuts the socket down for reading; the pending read
//! returns end of stream, the session sees [`Watch::fired`] and says `421 4.4.2`. Reads
//! therefore carry no io_uring timeout and no reactor timer of their own, and ten thousand
//! idle sessions cost one pass over a small vector per tick.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The sweep's period when every timeout is long; shorter timeouts get a sweep of half
/// their length, so a deadline is enforced within that much of its time.
pub const SWEEP_INTERVAL_MAX: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
struct Entry {
    fd: RawFd,
    /// Armed while a read is pending: only then is the descriptor certainly open.
    deadline: Option<Instant>,
    fired: bool,
}

#[derive(Default)]
pub struct Watchdog {
    entries: RefCell<Vec<Option<Entry>>>,
    free: RefCell<Vec<usize>>,
    fired_total: Cell<u64>,
}

impl Watchdog {
    pub fn register(self: &Rc<Self>, fd: RawFd) -> Watch {
        let entry = Entry {
            fd,
            deadline: None,
            fired: false,
        };
        let mut entries = self.entries.borrow_mut();
        let index = match self.free.borrow_mut().pop() {
            Some(i) => {
                entries[i] = Some(entry);
                i
            }
            None => {
                entries.push(Some(entry));
                entries.len() - 1
            }
        };
        Watch {
            dog: Rc::clone(self),
            index,
        }
    }

    /// Sessions timed out since the shard started.
    pub fn fired_total(&self) -> u64 {
        self.fired_total.get()
    }

    /// One pass: every armed deadline that has passed fires.
    pub fn sweep(&self, now: Instant) {
        for e in self.entries.borrow_mut().iter_mut().flatten() {
            if let Some(deadline) = e.deadline {
                if !e.fired && deadline <= now {
                    e.fired = true;
                    self.fired_total.set(self.fired_total.get() + 1);
                    // SAFETY: shutdown(2) touches no memory; the session holds the
                    // descriptor open while its watch is armed. The result does not
                    // matter: a socket the peer already closed has nothing to wake.
                    unsafe {
                        libc::shutdown(e.fd, libc::SHUT_RD);
                    }
                }
            }
        }
    }

    /// Sweeps until dropped (the shard drops the task at shutdown).
    pub async fn run(self: Rc<Self>, interval: Duration) {
        loop {
            glommio::timer::sleep(interval).await;
            self.sweep(Instant::now());
        }
    }
}

/// The sweep's period for the given session timeouts.
pub fn sweep_interval(timeouts: &[Duration]) -> Duration {
    timeouts
        .iter()
        .map(|t| *t / 2)
        .fold(SWEEP_INTERVAL_MAX, Duration::min)
        .max(Duration::from_millis(1))
}

/// One session's registration; dropping it unregisters.
pub struct Watch {
    dog: Rc<Watchdog>,
    index: usize,
}

impl Watch {
    fn with<R>(&self, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        self.dog
            .entries
            .borrow_mut()
            .get_mut(self.index)
            .and_then(Option::as_mut)
            .map(f)
    }

    pub fn arm(&self, deadline: Instant) {
        self.with(|e| e.deadline = Some(deadline));
    }

    pub fn disarm(&self) {
        self.with(|e| e.deadline = None);
    }

    /// The deadline passed: the socket no longer reads.
    pub fn fired(&self) -> bool {
        self.with(|e| e.fired).unwrap_or(false)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(slot) = self.dog.entries.borrow_mut().get_mut(self.index) {
            *slot = None;
            self.dog.free.borrow_mut().push(self.index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_once_only_when_armed_and_past() {
        let dog = Rc::new(Watchdog::default());
        // Descriptor -1: shutdown fails with EBADF, which the sweep ignores.
        let w = dog.register(-1);
        let t0 = Instant::now();
        dog.sweep(t0 + Duration::from_secs(100));
        assert!(!w.fired(), "a disarmed watch never fires");
        w.arm(t0 + Duration::from_secs(1));
        dog.sweep(t0);
        assert!(!w.fired());
        dog.sweep(t0 + Duration::from_secs(1));
        assert!(w.fired());
        dog.sweep(t0 + Duration::from_secs(2));
        assert_eq!(dog.fired_total(), 1);
    }

    #[test]
    fn slots_are_reused() {
        let dog = Rc::new(Watchdog::default());
        let a = dog.register(-1);
        let b = dog.register(-1);
        drop(a);
        let c = dog.register(-1);
        assert_eq!(c.index, 0);
        assert_eq!(dog.entries.borrow().len(), 2);
        drop((b, c));
        assert!(dog.entries.borrow().iter().all(Option::is_none));
    }

    #[test]
    fn sweep_interval_follows_the_shortest_timeout() {
        let s = Duration::from_secs;
        assert_eq!(sweep_interval(&[s(300), s(180)]), SWEEP_INTERVAL_MAX);
        assert_eq!(
            sweep_interval(&[s(300), Duration::from_millis(500)]),
            Duration::from_millis(250)
        );
    }
}
