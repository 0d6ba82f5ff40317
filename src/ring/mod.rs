//! The fixed-capacity lock-free multi-producer ring between the readers and the forwarder.
//!
//! Producers (`Producer`, cloneable) push without blocking or allocating; a full
//! ring hands the item back and counts the overflow, in items and in logs. One
//! `Consumer` drains in batches and can sleep until a push or close arrives.
//!
//! # Design
//!
//! The core (`shared.rs`) is crossbeam-queue's `ArrayQueue` cut down to one
//! consumer: a stamp per slot says whose turn the slot is, producers claim
//! positions with a CAS on a cache-padded tail, and the Release/Acquire stamp
//! hand-over is the only synchronisation an item needs. In the spirit of
//! `rtrb`, each side touches the other side's index only when the ring looks
//! full or empty: producers learn "full" from the slot stamp (no head read), the
//! consumer learns "empty" from the slot stamp (no tail read), and
//! [`Consumer::drain_into`] takes a whole batch in one pass and publishes its new
//! head once.
//!
//! # Sleeping without lost wake-ups
//!
//! The tail word also holds two flags, so every event the consumer may sleep
//! through is ordered on that one word's modification order (no SeqCst fences):
//!
//! 1. The consumer, finding the ring empty (tail position == its head), CASes the
//!    tail from `t` to `t | SLEEPING`. The CAS fails if a push or close moved the
//!    tail since `t`; it then looks again instead of sleeping.
//! 2. A push's claiming CAS writes a tail without flags, so it clears SLEEPING
//!    as a side effect; only if the bit was set does it, after publishing its
//!    stamp, set the token under a mutex and notify the condvar. When nobody
//!    sleeps the push fast path is one load of the tail, one of the stamp, one
//!    CAS and one store: no lock and no syscall.
//! 3. The consumer waits on the condvar until the token is set (or `wake`, or the
//!    timeout). On timeout it takes its bit back with a CAS from `t | SLEEPING`
//!    to `t`; if that fails a push or close got in first and a token is on its
//!    way, so it looks at the ring again. A token that arrives after the consumer
//!    stopped waiting only causes one harmless spurious wake-up later.
//! 4. `close` sets CLOSED with `fetch_or` (claims fail after it, since their CAS
//!    compares the whole word) and delivers the token if SLEEPING was set.
//!
//! The consumer never sleeps while a position is claimed but not yet published
//! (its producer cleared no SLEEPING bit, so no token would come): it yields
//! until the stamp appears, which is the few instructions between a producer's
//! CAS and its stamp store.
//!
//! # Why items hold shared `Bytes`
//!
//! The ring allocates its slots once, in [`ring`], and never again. The server's
//! items carry slices of the reader's receive buffer (`bytes::Bytes`), so memory
//! is freed once per received chunk when its last slice drops, not once per log.
//! Allocating each log on the reader thread and freeing it on the forwarder
//! thread was measured at 0.66 M logs/s with glibc: cross-thread frees are what
//! this layout avoids.
//!
//! # Dropping handles
//!
//! Dropping the `Consumer` closes the ring (later pushes return `Closed`).
//! Dropping every `Producer` does not wake the consumer: close the ring through
//! a [`RingHandle`] to say nothing more will come. Items still in the ring when
//! the last handle goes are dropped with it.

mod shared;

use std::time::Duration;

use crate::sync::atomic::Ordering;
use crate::sync::{yield_now, Arc, Deadline};
use shared::{Shared, CLOSED, FLAGS, MAX_CAPACITY, SLEEPING};

/// Why a push did not take the item; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError<T> {
    /// Every slot is taken; the overflow counters already include this item.
    Full(T),
    /// The ring was closed; nothing was counted.
    Closed(T),
}

/// What `Consumer::wait` saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// At least one item is ready.
    Ready,
    /// The timeout passed with the ring empty (or `wake` was called).
    TimedOut,
    /// The ring is closed and empty: nothing more will arrive.
    Closed,
}

/// Items and logs refused because the ring was full.
///
/// Each counter is exact once the refused push has returned; a snapshot taken
/// while a push is being refused may include its item but not yet its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Overflow {
    pub items: u64,
    pub logs: u64,
}

/// Why a ring could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("ring capacity must be a power of two >= 2, got {0}")]
    NotPowerOfTwo(usize),
    #[error("ring capacity must be at most {max}, got {capacity}")]
    TooLarge { capacity: usize, max: usize },
}

/// Creates a ring of `capacity` slots (a power of two >= 2); all memory is
/// allocated here.
pub fn ring<T: Send>(capacity: usize) -> Result<(Producer<T>, Consumer<T>), RingError> {
    if capacity < 2 || !capacity.is_power_of_two() {
        return Err(RingError::NotPowerOfTwo(capacity));
    }
    if capacity > MAX_CAPACITY {
        return Err(RingError::TooLarge {
            capacity,
            max: MAX_CAPACITY,
        });
    }
    let shared = Arc::new(Shared::with_capacity(capacity));
    let producer = Producer {
        shared: Arc::clone(&shared),
    };
    Ok((producer, Consumer { shared, head: 0 }))
}

/// The pushing side; clone it for each producer thread.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
}

impl<T: Send> Clone for Producer<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T: Send> Producer<T> {
    /// Pushes `item`, which carries `logs` logs (for the overflow count).
    /// Never blocks and never allocates.
    #[inline]
    pub fn push(&self, item: T, logs: u32) -> Result<(), PushError<T>> {
        self.shared.push(item, logs)
    }
    /// Items currently in the ring.
    pub fn len(&self) -> usize {
        self.shared.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }
    pub fn overflow(&self) -> Overflow {
        self.shared.overflow()
    }
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }
}

/// The single draining side.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// Next position to take; the shared head is this, published after each batch.
    head: usize,
}

impl<T: Send> Consumer<T> {
    /// Takes one item.
    pub fn pop(&mut self) -> Option<T> {
        let mut popped = None;
        // SAFETY: `&mut self` on the one `Consumer` makes this the only, non-concurrent
        // consumer call, and `self.head` is the position the previous call returned.
        self.head = unsafe { self.shared.take(self.head, 1, |item| popped = Some(item)) };
        popped
    }
    /// Moves up to `max` items, oldest first, onto the end of `out`; returns how many.
    pub fn drain_into(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        let before = out.len();
        // SAFETY: as in `pop`: sole consumer, head from the previous call.
        self.head = unsafe { self.shared.take(self.head, max, |item| out.push(item)) };
        out.len() - before
    }
    /// Blocks until an item is ready, the ring is closed and empty, `timeout`
    /// passes, or `wake` is called. Never sleeps while an item is in the ring.
    ///
    /// A pending `wake` wins over everything: it makes this call return
    /// `TimedOut` at once. Under loom (`cfg(boundary_loom)`) a non-zero timeout
    /// never passes (see `crate::sync`).
    pub fn wait(&mut self, timeout: Duration) -> WaitOutcome {
        let shared = &*self.shared;
        let deadline = Deadline::after(timeout);
        loop {
            // A pending wake() makes this wait return at once.
            if shared.wake_pending.load(Ordering::Relaxed) && self.take_wake() {
                return WaitOutcome::TimedOut;
            }
            // The oldest item is published: nothing to wait for.
            if shared.is_ready(self.head) {
                return WaitOutcome::Ready;
            }
            let seen = shared.tail_word();
            if seen & !FLAGS != self.head {
                // Claimed but not yet published: its producer will send no token, so yield until the stamp lands.
                if deadline.has_passed() {
                    return WaitOutcome::TimedOut;
                }
                yield_now();
                continue;
            }
            // Empty, and closed: nothing can arrive any more.
            if seen & CLOSED != 0 {
                return WaitOutcome::Closed;
            }
            if deadline.has_passed() {
                return WaitOutcome::TimedOut;
            }
            // Announce the sleep on this exact tail word; a push or close since then makes us look again.
            if seen & SLEEPING == 0 && !shared.announce_sleep(seen) {
                continue;
            }
            let announced = seen | SLEEPING;
            if self.sleep(&deadline) {
                // Token: a push published an item (or close): look again.
                continue;
            }
            // Timed out or woken: take the announcement back; if a push or close beat us, its token is coming, look again.
            if shared.retract_sleep(announced) {
                self.take_wake();
                return WaitOutcome::TimedOut;
            }
        }
    }

    /// Sleeps until the token (true), or `wake` or the deadline (false).
    fn sleep(&self, deadline: &Deadline) -> bool {
        let shared = &*self.shared;
        let mut token = shared
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            // Consume the token a push or close left for us.
            if *token {
                *token = false;
                return true;
            }
            // wake() sets its flag before taking this lock, so we see it here or get its notify.
            if shared.wake_pending.load(Ordering::Acquire) || deadline.has_passed() {
                return false;
            }
            token = deadline.wait(&shared.token_ready, token);
        }
    }

    /// Consumes a pending `wake`; true if there was one.
    fn take_wake(&self) -> bool {
        self.shared.wake_pending.swap(false, Ordering::AcqRel)
    }

    /// Refuses every later push; items already in the ring stay drainable.
    pub fn close(&self) {
        self.shared.close();
    }
    /// A handle that can close the ring or wake the consumer from another thread.
    pub fn handle(&self) -> RingHandle<T> {
        RingHandle {
            shared: Arc::clone(&self.shared),
        }
    }
    pub fn len(&self) -> usize {
        self.shared.len_from(self.head)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }
    pub fn overflow(&self) -> Overflow {
        self.shared.overflow()
    }
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        // Nobody will drain any more: refuse later pushes instead of letting them fill the ring.
        self.shared.close();
    }
}

/// Cross-thread control of the ring: close it, wake a waiting consumer, read gauges.
pub struct RingHandle<T> {
    shared: Arc<Shared<T>>,
}

impl<T: Send> Clone for RingHandle<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T: Send> RingHandle<T> {
    pub fn close(&self) {
        self.shared.close();
    }
    /// Makes a current or the next `wait` return `TimedOut` at once.
    pub fn wake(&self) {
        let shared = &*self.shared;
        // Flag first, then lock: a consumer checks the flag under the lock before each sleep.
        shared.wake_pending.store(true, Ordering::Release);
        drop(
            shared
                .token
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        shared.token_ready.notify_one();
    }
    pub fn len(&self) -> usize {
        self.shared.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }
    pub fn overflow(&self) -> Overflow {
        self.shared.overflow()
    }
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }
}

#[cfg(all(test, not(boundary_loom)))]
mod tests;
