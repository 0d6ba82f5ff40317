//! The ring's shared state and its lock-free core: the tail word, the slot
//! stamps, push, the consumer's batch take, and close.
//!
//! Positions count pushes since creation, in steps of [`ONE`] so the two low
//! bits of the tail word can hold the [`SLEEPING`] and [`CLOSED`] flags. Position
//! `p` lives in slot `(p / ONE) & mask`. Each slot's stamp says whose turn it is:
//!
//! | stamp of the slot for position `p` | meaning |
//! |---|---|
//! | `p` | free: the producer that claims `p` may write it |
//! | `p + ONE` | written: the consumer at `p` may take it |
//! | `p + lap` (= the next lap's `p`) | taken: free for position `p + lap` |
//!
//! A producer claims a position by moving the tail with a CAS, writes the item,
//! then publishes it by storing the stamp (Release). The single consumer never
//! touches the tail on its fast path: it reads stamps (Acquire) from its own
//! head, takes the items, hands each slot to the next lap (Release), and
//! publishes the head once per batch (only `len` reads the shared head).

use std::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use crate::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use crate::sync::{spin_hint, Condvar, Mutex, UnsafeCell};

/// Tail flag: the consumer found the ring empty and sleeps (or is about to);
/// the push that next moves the tail clears it and owes the consumer a token.
pub(super) const SLEEPING: usize = 0b01;
/// Tail flag: the ring is closed; no position is claimed after it is set.
pub(super) const CLOSED: usize = 0b10;
/// Both flags.
pub(super) const FLAGS: usize = SLEEPING | CLOSED;
/// One position, above the flag bits.
pub(super) const ONE: usize = 0b100;
/// Largest capacity `ring` accepts (positions must span at most half of `usize`).
pub(super) const MAX_CAPACITY: usize = 1 << 30;

/// One cell of the ring.
struct Slot<T> {
    /// Whose turn it is (see the module table).
    stamp: AtomicUsize,
    /// The item, initialised exactly while the stamp says "written".
    value: UnsafeCell<MaybeUninit<T>>,
}

/// Counters only written when a push finds the ring full.
#[derive(Default)]
struct OverflowCounters {
    items: AtomicU64,
    logs: AtomicU64,
}

/// Everything the handles share.
pub(super) struct Shared<T> {
    /// Next position to claim, plus the SLEEPING and CLOSED flags.
    tail: CachePadded<AtomicUsize>,
    /// Next position the consumer takes, published once per batch (for `len`).
    head: CachePadded<AtomicUsize>,
    slots: Box<[Slot<T>]>,
    /// `capacity - 1`: slot index mask.
    mask: usize,
    /// `capacity * ONE`: how far a stamp moves when the consumer frees a slot.
    lap: usize,
    overflow: CachePadded<OverflowCounters>,
    /// Set by `wake`; the next `wait` consumes it and returns at once.
    pub(super) wake_pending: AtomicBool,
    /// The wake token: set by whoever clears or overrides SLEEPING, consumed by
    /// the consumer. Only touched when the consumer sleeps.
    pub(super) token: Mutex<bool>,
    pub(super) token_ready: Condvar,
}

// SAFETY: the slots hold `T`s that move between threads (hence `T: Send`);
// every access to a slot's value is serialised by its stamp (one writer after
// claiming the position, then the one consumer after the Release/Acquire stamp
// hand-over), so sharing `&Shared<T>` never gives two threads the same `T`.
unsafe impl<T: Send> Sync for Shared<T> {}
// SAFETY: as above; the `T`s inside are `Send`.
unsafe impl<T: Send> Send for Shared<T> {}

impl<T> Shared<T> {
    /// A ring of `capacity` slots; the caller has checked it is a power of two
    /// in `2..=MAX_CAPACITY`.
    pub(super) fn with_capacity(capacity: usize) -> Self {
        debug_assert!(capacity.is_power_of_two() && (2..=MAX_CAPACITY).contains(&capacity));
        let slots = (0..capacity)
            .map(|i| Slot {
                // Slot `i` is free for position `i` of the first lap.
                stamp: AtomicUsize::new(i * ONE),
                value: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect();
        Self {
            tail: CachePadded::new(AtomicUsize::new(0)),
            head: CachePadded::new(AtomicUsize::new(0)),
            slots,
            mask: capacity - 1,
            lap: capacity * ONE,
            overflow: CachePadded::new(OverflowCounters::default()),
            wake_pending: AtomicBool::new(false),
            token: Mutex::new(false),
            token_ready: Condvar::new(),
        }
    }

    pub(super) fn capacity(&self) -> usize {
        self.mask + 1
    }

    #[inline(always)]
    fn slot(&self, position: usize) -> &Slot<T> {
        &self.slots[(position / ONE) & self.mask]
    }

    /// Pushes `item`, or hands it back when the ring is full (counted) or closed (not counted).
    #[inline]
    pub(super) fn push(&self, item: T, logs: u32) -> Result<(), super::PushError<T>> {
        // Start from the tail as we last saw it; a stale value only costs a failed CAS.
        let mut tail = self.tail.load(Ordering::Relaxed);
        loop {
            // A closed ring takes nothing and counts nothing.
            if tail & CLOSED != 0 {
                return Err(super::PushError::Closed(item));
            }
            let position = tail & !FLAGS;
            let slot = self.slot(position);
            // Whose turn is this slot? Acquire: if it is ours, the consumer's read of last lap's item happened before.
            let stamp = slot.stamp.load(Ordering::Acquire);
            if stamp == position {
                // Free for us: claim the position. The new tail has no flags: a set SLEEPING becomes our token to deliver.
                let next = position.wrapping_add(ONE);
                match self.tail.compare_exchange_weak(
                    tail,
                    next,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: the CAS made this position ours alone, and the stamp
                        // (Acquire above) shows the consumer is done with the slot's
                        // previous item, so nobody else touches this cell until we
                        // publish the stamp below.
                        slot.value
                            .with_mut(|cell| unsafe { cell.write(MaybeUninit::new(item)) });
                        // Publish the item: Release pairs with the consumer's Acquire stamp load.
                        slot.stamp.store(next, Ordering::Release);
                        // The consumer announced sleep before our claim: it is ours to wake, after publishing so it finds the item.
                        if tail & SLEEPING != 0 {
                            self.deliver_token();
                        }
                        return Ok(());
                    }
                    // Another producer claimed it first, or a flag changed: retry from the tail the CAS saw.
                    Err(current) => tail = current,
                }
            } else if (stamp.wrapping_sub(position) as isize) < 0 {
                // The slot still holds last lap's item: the ring is full, unless the tail moved while we looked.
                let current = self.tail.load(Ordering::Relaxed);
                if current == tail {
                    // Full: count the refusal (both counters, before returning, so drops are exact).
                    self.overflow.items.fetch_add(1, Ordering::Relaxed);
                    self.overflow
                        .logs
                        .fetch_add(u64::from(logs), Ordering::Relaxed);
                    return Err(super::PushError::Full(item));
                }
                tail = current;
            } else {
                // The stamp is ahead: another producer already claimed this position; our tail is stale.
                spin_hint();
                tail = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Wakes the consumer that set SLEEPING; called by whoever cleared or overrode it.
    #[cold]
    pub(super) fn deliver_token(&self) {
        let mut token = self
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *token = true;
        drop(token);
        self.token_ready.notify_one();
    }

    /// True when the item at `head` has been published.
    #[inline]
    pub(super) fn is_ready(&self, head: usize) -> bool {
        // Acquire for the answer only (the take that follows loads the stamp again with
        // Acquire, and that load is what makes the item visible to it).
        self.slot(head).stamp.load(Ordering::Acquire) == head.wrapping_add(ONE)
    }

    /// Takes up to `max` published items starting at position `head`, oldest
    /// first, passing each to `sink`; returns the position after the last one
    /// taken and publishes it as the shared head (once, if anything was taken).
    ///
    /// # Safety
    ///
    /// Only the ring's one consumer may call this, always with the position
    /// returned by its previous call (0 at first), and never concurrently. `sink`
    /// must not panic: a slot already handed on to the next lap would lie behind a
    /// head that never moved past it, and the consumer would find nothing again
    /// (no item is dropped twice or leaked: `Drop` goes by the stamps).
    #[inline]
    pub(super) unsafe fn take(&self, head: usize, max: usize, mut sink: impl FnMut(T)) -> usize {
        let mut position = head;
        let mut taken = 0;
        while taken < max {
            let slot = self.slot(position);
            let next = position.wrapping_add(ONE);
            // Is the oldest item published? Acquire pairs with the producer's Release stamp store.
            if slot.stamp.load(Ordering::Acquire) != next {
                // Empty, or its producer is between claim and publish: stop the batch here.
                break;
            }
            // SAFETY: the stamp says "written" for our position and we are the only
            // consumer (caller's contract), so the cell holds an initialised item
            // that no producer touches until we hand the slot on below.
            let item = slot.value.with(|cell| unsafe { cell.read().assume_init() });
            // Hand the slot to the next lap: Release pairs with that producer's Acquire stamp load.
            slot.stamp
                .store(position.wrapping_add(self.lap), Ordering::Release);
            sink(item);
            position = next;
            taken += 1;
        }
        if taken > 0 {
            // Publish the new head once for the whole batch (read only by `len`).
            self.head.store(position, Ordering::Release);
        }
        position
    }

    /// The tail word (position and flags).
    #[inline]
    pub(super) fn tail_word(&self) -> usize {
        self.tail.load(Ordering::Acquire)
    }

    /// Announces that the consumer will sleep on the empty ring whose tail word is
    /// `seen`; fails if a push or close moved the tail since.
    pub(super) fn announce_sleep(&self, seen: usize) -> bool {
        self.tail
            .compare_exchange(seen, seen | SLEEPING, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes back the announcement made on `seen` (which has SLEEPING set); fails if
    /// a push or close moved the tail since, in which case its token is on the way.
    pub(super) fn retract_sleep(&self, seen: usize) -> bool {
        self.tail
            .compare_exchange(seen, seen & !SLEEPING, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Refuses every later push and wakes a sleeping consumer.
    pub(super) fn close(&self) {
        // One RMW on the tail word: every claim is before it or fails after it.
        let before = self.tail.fetch_or(CLOSED, Ordering::AcqRel);
        // SLEEPING stays set, but a closed ring has no push left to deliver the token: we do.
        if before & SLEEPING != 0 {
            self.deliver_token();
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.tail_word() & CLOSED != 0
    }

    /// Items in the ring (claimed positions not yet taken), seen from any thread.
    pub(super) fn len(&self) -> usize {
        // Head first: it never passes the tail, so a later tail read is not behind it.
        let head = self.head.load(Ordering::Acquire);
        self.len_from(head)
    }

    /// Items in the ring counted from a known head.
    pub(super) fn len_from(&self, head: usize) -> usize {
        let tail = self.tail_word() & !FLAGS;
        let span = tail.wrapping_sub(head) as isize;
        (span.max(0) as usize / ONE).min(self.capacity())
    }

    pub(super) fn overflow(&self) -> super::Overflow {
        super::Overflow {
            items: self.overflow.items.load(Ordering::Relaxed),
            logs: self.overflow.logs.load(Ordering::Relaxed),
        }
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // No handle is left: drop the items still in the ring, from head to tail.
        let mut position = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed) & !FLAGS;
        while position != tail {
            let slot = self.slot(position);
            let next = position.wrapping_add(ONE);
            if slot.stamp.load(Ordering::Relaxed) == next {
                // SAFETY: `&mut self` means no handle remains, and the stamp says
                // this cell holds an item nobody took.
                slot.value
                    .with_mut(|cell| unsafe { cell.cast::<T>().drop_in_place() });
            }
            position = next;
        }
    }
}
