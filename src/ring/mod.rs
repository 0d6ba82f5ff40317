//! The fixed-capacity lock-free multi-producer ring between the readers and the forwarder.
//!
//! Producers (`Producer`, cloneable) push without blocking or allocating; a full
//! ring hands the item back and counts the overflow, in items and in logs. One
//! `Consumer` drains in batches and can sleep until a push or close arrives.

use std::time::Duration;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Overflow {
    pub items: u64,
    pub logs: u64,
}

/// Creates a ring of `capacity` slots (a power of two >= 2).
pub fn ring<T: Send>(_capacity: usize) -> (Producer<T>, Consumer<T>) {
    todo!()
}

/// The pushing side; clone it for each producer thread.
pub struct Producer<T> {
    _p: std::marker::PhantomData<T>,
}

impl<T: Send> Clone for Producer<T> {
    fn clone(&self) -> Self {
        todo!()
    }
}

impl<T: Send> Producer<T> {
    /// Pushes `item`, which carries `logs` logs (for the overflow count).
    pub fn push(&self, _item: T, _logs: u32) -> Result<(), PushError<T>> {
        todo!()
    }
    /// Items currently in the ring.
    pub fn len(&self) -> usize {
        todo!()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn capacity(&self) -> usize {
        todo!()
    }
    pub fn overflow(&self) -> Overflow {
        todo!()
    }
    pub fn is_closed(&self) -> bool {
        todo!()
    }
}

/// The single draining side.
pub struct Consumer<T> {
    _p: std::marker::PhantomData<T>,
}

impl<T: Send> Consumer<T> {
    /// Takes one item.
    pub fn pop(&mut self) -> Option<T> {
        todo!()
    }
    /// Moves up to `max` items, oldest first, onto the end of `out`; returns how many.
    pub fn drain_into(&mut self, _out: &mut Vec<T>, _max: usize) -> usize {
        todo!()
    }
    /// Blocks until an item is ready, the ring is closed and empty, `timeout`
    /// passes, or `wake` is called. Never sleeps while an item is in the ring.
    pub fn wait(&mut self, _timeout: Duration) -> WaitOutcome {
        todo!()
    }
    /// Refuses every later push; items already in the ring stay drainable.
    pub fn close(&self) {
        todo!()
    }
    /// A handle that can close the ring or wake the consumer from another thread.
    pub fn handle(&self) -> RingHandle<T> {
        todo!()
    }
    pub fn len(&self) -> usize {
        todo!()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn capacity(&self) -> usize {
        todo!()
    }
    pub fn overflow(&self) -> Overflow {
        todo!()
    }
}

/// Cross-thread control of the ring: close it, wake a waiting consumer, read gauges.
pub struct RingHandle<T> {
    _p: std::marker::PhantomData<T>,
}

impl<T: Send> Clone for RingHandle<T> {
    fn clone(&self) -> Self {
        todo!()
    }
}

impl<T: Send> RingHandle<T> {
    pub fn close(&self) {
        todo!()
    }
    /// Makes a current or the next `wait` return `TimedOut` at once.
    pub fn wake(&self) {
        todo!()
    }
    pub fn len(&self) -> usize {
        todo!()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn capacity(&self) -> usize {
        todo!()
    }
    pub fn overflow(&self) -> Overflow {
        todo!()
    }
    pub fn is_closed(&self) -> bool {
        todo!()
    }
}

#[allow(unused_imports)]
use crate::sync as _sync_shim_is_used_by_the_real_ring;
