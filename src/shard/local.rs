//! Single-threaded wake-up primitives for one shard: no atomics, no locks.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A one-shot event with a value, awaited by any number of tasks. A waiter that goes
/// away (a dropped future, e.g. the losing side of a select) takes its waker with it, so
/// long-lived latches raced against every read do not accumulate wakers.
pub struct Latch<T: Copy> {
    value: Cell<Option<T>>,
    waiters: RefCell<Waiters>,
}

#[derive(Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl<T: Copy> Default for Latch<T> {
    fn default() -> Self {
        Latch {
            value: Cell::new(None),
            waiters: RefCell::new(Waiters::default()),
        }
    }
}

impl<T: Copy> Latch<T> {
    pub fn set(&self, value: T) {
        if self.value.get().is_none() {
            self.value.set(Some(value));
            let mut w = self.waiters.borrow_mut();
            w.free.clear();
            for waker in w.slots.drain(..).flatten() {
                waker.wake();
            }
        }
    }

    pub fn get(&self) -> Option<T> {
        self.value.get()
    }

    pub fn wait(self: &Rc<Self>) -> LatchWait<T> {
        LatchWait {
            latch: Rc::clone(self),
            slot: None,
        }
    }
}

pub struct LatchWait<T: Copy> {
    latch: Rc<Latch<T>>,
    slot: Option<usize>,
}

impl<T: Copy> Future for LatchWait<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(v) = self.latch.value.get() {
            self.slot = None;
            return Poll::Ready(v);
        }
        let latch = Rc::clone(&self.latch);
        let mut w = latch.waiters.borrow_mut();
        match self.slot {
            Some(i) => match &mut w.slots[i] {
                Some(old) if old.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            },
            None => {
                let i = match w.free.pop() {
                    Some(i) => {
                        w.slots[i] = Some(cx.waker().clone());
                        i
                    }
                    None => {
                        w.slots.push(Some(cx.waker().clone()));
                        w.slots.len() - 1
                    }
                };
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl<T: Copy> Drop for LatchWait<T> {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            if let Ok(mut w) = self.latch.waiters.try_borrow_mut() {
                if let Some(slot) = w.slots.get_mut(i) {
                    *slot = None;
                    w.free.push(i);
                }
            }
        }
    }
}

/// A repeatable wake-up for one waiting task (e.g. the log committer).
#[derive(Default)]
pub struct Signal {
    raised: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    pub fn raise(&self) {
        self.raised.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves once raised since the last wait, and lowers it again.
    pub fn wait(&self) -> SignalWait<'_> {
        SignalWait { signal: self }
    }
}

pub struct SignalWait<'a> {
    signal: &'a Signal,
}

impl Future for SignalWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.raised.replace(false) {
            return Poll::Ready(());
        }
        *self.signal.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_waiters_are_removed() {
        let latch: Rc<Latch<u8>> = Rc::default();
        let waker = futures_lite::future::block_on(futures_lite::future::poll_fn(|cx| {
            Poll::Ready(cx.waker().clone())
        }));
        let mut cx = Context::from_waker(&waker);
        for _ in 0..1000 {
            let mut w = latch.wait();
            assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
        }
        assert_eq!(latch.waiters.borrow().slots.len(), 1);
        let mut w = latch.wait();
        assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
        latch.set(7);
        assert_eq!(Pin::new(&mut w).poll(&mut cx), Poll::Ready(7));
    }
}

/// A wake-up for any number of waiting tasks, any number of times: `notify_all` wakes
/// everyone waiting; each re-checks its own condition. For a few waiters (idle delivery
/// connections of one site), simpler than handing work to one.
#[derive(Default)]
pub struct Notify {
    generation: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Notify {
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get() + 1);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Wakes one waiter. Every `Notified` taken before this call completes when next
    /// polled (the woken one, and any polled for another reason, which then looks again).
    pub fn notify_one(&self) {
        self.generation.set(self.generation.get() + 1);
        let next = self.waiters.borrow_mut().pop();
        if let Some(w) = next {
            w.wake();
        }
    }

    pub fn notified(&self) -> Notified<'_> {
        Notified {
            notify: self,
            generation: self.generation.get(),
        }
    }
}

pub struct Notified<'a> {
    notify: &'a Notify,
    generation: u64,
}

impl Future for Notified<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.generation {
            return Poll::Ready(());
        }
        let mut w = self.notify.waiters.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
