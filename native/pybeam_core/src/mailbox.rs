//! A bounded multi-producer queue whose one consumer thread parks when idle.
//!
//! Producers wake the consumer only on the empty -> non-empty transition: when a batch is
//! already waiting, the consumer is awake or about to drain it, and another `unpark` would
//! only cost an atomic swap (or a futex syscall if it raced with parking).
//!
//! Room is reserved before items are pushed (the `queued` count is claimed first), so a
//! batch goes in whole or not at all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

pub struct Mailbox<T> {
    queue: ArrayQueue<T>,
    /// Items reserved or pushed, and not yet taken; never below the queue's real length.
    /// The consumer parks only when this is zero, so a push that sees a non-zero count can
    /// skip the wake-up safely.
    queued: AtomicUsize,
    consumer: OnceLock<Thread>,
}

impl<T> Mailbox<T> {
    pub fn new(capacity: usize) -> Self {
        Mailbox {
            queue: ArrayQueue::new(capacity.max(1)),
            queued: AtomicUsize::new(0),
            consumer: OnceLock::new(),
        }
    }

    /// Names the thread to wake. Items pushed before this are still seen: the consumer
    /// checks the count before it first parks.
    pub fn set_consumer(&self, thread: Thread) {
        let _ = self.consumer.set(thread);
    }

    /// Claims room for `n` items; returns the count before the claim.
    fn reserve(&self, n: usize) -> Option<usize> {
        let capacity = self.queue.capacity();
        self.queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| (q + n <= capacity).then_some(q + n))
            .ok()
    }

    /// Queues an item, or hands it back when the queue is full.
    pub fn push(&self, item: T) -> Result<(), T> {
        let Some(before) = self.reserve(1) else { return Err(item) };
        // Cannot fail: the queue holds at most `queued` items and we reserved a slot.
        if let Err(item) = self.queue.push(item) {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(item);
        }
        if before == 0 {
            self.wake();
        }
        Ok(())
    }

    /// Queues all items, in order, or none of them (handed back) when they do not fit.
    pub fn push_all(&self, items: Vec<T>) -> Result<(), Vec<T>> {
        if items.is_empty() {
            return Ok(());
        }
        let Some(before) = self.reserve(items.len()) else { return Err(items) };
        for item in items {
            // Cannot fail, as in `push`; a failure would mean a broken invariant, and the
            // item is dropped rather than the consumer woken for a slot that never fills.
            if self.queue.push(item).is_err() {
                self.queued.fetch_sub(1, Ordering::SeqCst);
            }
        }
        if before == 0 {
            self.wake();
        }
        Ok(())
    }

    /// Wakes the consumer whatever the count (used to ask it to stop).
    pub fn wake(&self) {
        if let Some(t) = self.consumer.get() {
            t.unpark();
        }
    }

    /// Moves up to `max` items into `out`; returns how many.
    pub fn take(&self, max: usize, out: &mut Vec<T>) -> usize {
        let mut n = 0;
        while n < max {
            match self.queue.pop() {
                Some(item) => {
                    out.push(item);
                    n += 1;
                }
                None => break,
            }
        }
        if n > 0 {
            self.queued.fetch_sub(n, Ordering::SeqCst);
        }
        n
    }

    pub fn is_empty(&self) -> bool {
        self.queued.load(Ordering::SeqCst) == 0
    }

    pub fn len(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }
}

/// Polls `ready()` for up to `spin` (or until `deadline`), then parks as
/// `park_until_ready` does.
pub fn spin_then_park(ready: impl Fn() -> bool, spin: Duration, deadline: Option<Instant>) {
    if !spin_until_ready(&ready, spin, deadline) {
        park_until_ready(ready, deadline);
    }
}

/// How long `spin_until_ready` polls before it starts yielding its core between polls.
/// Most answers it waits for (a sequential caller's next request, an Erlang function's
/// reply) come within this; those that do not (fd readiness through the BEAM's poller, then
/// the event process) need other threads to run, maybe on this core.
const SPIN_BEFORE_YIELD: Duration = Duration::from_micros(10);

/// Polls `ready()` for up to `spin` (or until `deadline`); says whether it came true.
/// After `SPIN_BEFORE_YIELD` the thread yields its core between rounds of polling: on a
/// machine with few cores the thread that will make `ready()` true (a scheduler, the
/// BEAM's poller) may be waiting for this very core, and a bare spin delays it. Measured
/// on 2 cores: TCP echo through a loop 20-26k round trips/s spinning bare, 27-31k
/// yielding after 10 us; yielding from the start cost sequential `py:call`s and
/// `erlang.call`s some of their rate.
pub fn spin_until_ready(ready: impl Fn() -> bool, spin: Duration, deadline: Option<Instant>) -> bool {
    let start = Instant::now();
    let spin_until = deadline.map_or(start + spin, |d| d.min(start + spin));
    let yield_after = start + SPIN_BEFORE_YIELD;
    loop {
        // Reading the clock costs about 90 ns on these VMs, so poll in between.
        for _ in 0..64 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        let now = Instant::now();
        if now >= spin_until {
            return ready();
        }
        if now >= yield_after {
            std::thread::yield_now();
        }
    }
}

/// Parks the calling thread until `ready()` holds or `deadline` passes. Whoever makes
/// `ready()` true unparks the thread after; an early or spurious wake-up just looks again.
pub fn park_until_ready(ready: impl Fn() -> bool, deadline: Option<Instant>) {
    while !ready() {
        match deadline {
            None => std::thread::park(),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return;
                }
                std::thread::park_timeout(d - now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn park_until_ready_returns_when_ready_or_at_the_deadline() {
        use std::sync::atomic::AtomicBool;
        let start = Instant::now();
        park_until_ready(|| true, None);
        park_until_ready(|| false, Some(start + Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(20));

        let flag = Arc::new(AtomicBool::new(false));
        let waiter = {
            let flag = flag.clone();
            std::thread::spawn(move || park_until_ready(|| flag.load(Ordering::SeqCst), None))
        };
        std::thread::sleep(Duration::from_millis(10));
        flag.store(true, Ordering::SeqCst);
        waiter.thread().unpark();
        assert!(waiter.join().is_ok());
    }

    #[test]
    fn spin_until_ready_sees_a_change_or_gives_up_at_its_limit() {
        use std::sync::atomic::AtomicBool;
        let start = Instant::now();
        assert!(!spin_until_ready(|| false, Duration::from_millis(5), None));
        assert!(start.elapsed() >= Duration::from_millis(5));
        // A deadline before the end of the spin ends it.
        let start = Instant::now();
        assert!(!spin_until_ready(|| false, Duration::from_secs(10), Some(start + Duration::from_millis(5))));
        assert!(start.elapsed() < Duration::from_secs(5));

        let flag = Arc::new(AtomicBool::new(false));
        let setter = {
            let flag = flag.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(2));
                flag.store(true, Ordering::SeqCst);
            })
        };
        assert!(spin_until_ready(|| flag.load(Ordering::SeqCst), Duration::from_secs(10), None));
        assert!(setter.join().is_ok());
    }

    #[test]
    fn bounded_and_fifo() {
        let m = Mailbox::new(2);
        assert!(m.push(1).is_ok());
        assert!(m.push(2).is_ok());
        assert_eq!(m.push(3), Err(3));
        let mut out = vec![];
        assert_eq!(m.take(10, &mut out), 2);
        assert_eq!(out, vec![1, 2]);
        assert!(m.is_empty());
    }

    #[test]
    fn take_respects_max() {
        let m = Mailbox::new(10);
        for i in 0..5 {
            m.push(i).unwrap();
        }
        let mut out = vec![];
        assert_eq!(m.take(3, &mut out), 3);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_batch_goes_in_whole_or_not_at_all() {
        let m = Mailbox::new(5);
        m.push(0).unwrap();
        assert_eq!(m.push_all(vec![1, 2, 3, 4, 5]), Err(vec![1, 2, 3, 4, 5]));
        assert_eq!(m.len(), 1);
        assert!(m.push_all(vec![1, 2, 3, 4]).is_ok());
        let mut out = vec![];
        m.take(10, &mut out);
        assert_eq!(out, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn concurrent_batches_never_exceed_capacity() {
        let m = Arc::new(Mailbox::new(100));
        let producers: Vec<_> = (0..8)
            .map(|p| {
                let m = m.clone();
                std::thread::spawn(move || {
                    (0..50).filter(|i| m.push_all(vec![(p, *i); 7]).is_ok()).count()
                })
            })
            .collect();
        let accepted: usize = producers.into_iter().map(|h| h.join().unwrap()).sum();
        let mut out = vec![];
        m.take(1000, &mut out);
        assert_eq!(out.len(), accepted * 7);
        assert!(out.len() <= 100);
        // Each batch is contiguous per producer and complete.
        for p in 0..8 {
            assert_eq!(out.iter().filter(|(q, _)| *q == p).count() % 7, 0);
        }
    }

    #[test]
    fn parked_consumer_is_woken_by_first_push() {
        let m = Arc::new(Mailbox::new(16));
        let consumer_box = m.clone();
        let consumer = std::thread::spawn(move || {
            let mut got = vec![];
            while got.len() < 100 {
                if consumer_box.is_empty() {
                    std::thread::park_timeout(Duration::from_secs(5));
                }
                consumer_box.take(8, &mut got);
            }
            got
        });
        m.set_consumer(consumer.thread().clone());
        for i in 0..100 {
            while m.push(i).is_err() {
                std::thread::yield_now();
            }
        }
        let got = consumer.join().unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }
}
