//! Single-threaded behaviour of the ring: capacity rules, order, overflow and
//! close accounting, wrap-around, `len`, and dropping what is left.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};
use std::sync::Arc as StdArc;

#[test]
fn capacity_must_be_a_power_of_two_of_at_least_two() {
    for bad in [0, 1, 3, 6, 1000] {
        assert_eq!(ring::<u32>(bad).err(), Some(RingError::NotPowerOfTwo(bad)));
    }
    assert!(matches!(
        ring::<u32>(MAX_CAPACITY * 2),
        Err(RingError::TooLarge { .. })
    ));
    let (producer, consumer) = ring::<u32>(2).unwrap();
    assert_eq!((producer.capacity(), consumer.capacity()), (2, 2));
}

#[test]
fn capacity_error_message_names_the_rule_and_the_value() {
    let message = ring::<u32>(12).err().unwrap().to_string();
    assert!(message.contains("power of two >= 2"), "{message}");
    assert!(message.contains("12"), "{message}");
}

#[test]
fn items_come_out_in_push_order() {
    let (producer, mut consumer) = ring(8).unwrap();
    for i in 0..5 {
        producer.push(i, 1).unwrap();
    }
    let mut out = Vec::new();
    assert_eq!(consumer.drain_into(&mut out, 100), 5);
    assert_eq!(out, vec![0, 1, 2, 3, 4]);
    assert_eq!(consumer.pop(), None);
}

#[test]
fn drain_takes_at_most_max_and_appends() {
    let (producer, mut consumer) = ring(8).unwrap();
    for i in 0..6 {
        producer.push(i, 1).unwrap();
    }
    let mut out = vec![99];
    assert_eq!(consumer.drain_into(&mut out, 4), 4);
    assert_eq!(out, vec![99, 0, 1, 2, 3]);
    assert_eq!(consumer.len(), 2);
    assert_eq!(consumer.drain_into(&mut out, 0), 0);
    assert_eq!(consumer.pop(), Some(4));
    assert_eq!(consumer.pop(), Some(5));
    assert_eq!(consumer.pop(), None);
}

#[test]
fn full_ring_returns_the_item_and_counts_items_and_logs() {
    let (producer, mut consumer) = ring(4).unwrap();
    for i in 0..4 {
        producer.push(i, 10).unwrap();
    }
    assert_eq!(producer.push(4, 7), Err(PushError::Full(4)));
    assert_eq!(producer.push(5, 3), Err(PushError::Full(5)));
    assert_eq!(producer.overflow(), Overflow { items: 2, logs: 10 });
    assert_eq!(consumer.overflow(), producer.overflow());
    // One slot freed: exactly one more push fits.
    assert_eq!(consumer.pop(), Some(0));
    producer.push(6, 1).unwrap();
    assert_eq!(producer.push(7, 1), Err(PushError::Full(7)));
    assert_eq!(producer.overflow(), Overflow { items: 3, logs: 11 });
}

#[test]
fn closed_ring_refuses_without_counting_and_keeps_what_it_holds() {
    let (producer, mut consumer) = ring(2).unwrap();
    producer.push(1, 1).unwrap();
    producer.push(2, 1).unwrap();
    consumer.handle().close();
    assert!(producer.is_closed());
    // Closed wins over full, and counts nothing.
    assert_eq!(producer.push(3, 5), Err(PushError::Closed(3)));
    assert_eq!(producer.overflow(), Overflow::default());
    assert_eq!(consumer.wait(Duration::ZERO), WaitOutcome::Ready);
    let mut out = Vec::new();
    consumer.drain_into(&mut out, 10);
    assert_eq!(out, vec![1, 2]);
    assert_eq!(consumer.wait(Duration::from_secs(5)), WaitOutcome::Closed);
}

#[test]
fn many_laps_around_a_small_ring_keep_order() {
    let (producer, mut consumer) = ring(2).unwrap();
    let mut out = Vec::new();
    for lap in 0..1000u32 {
        producer.push(lap * 2, 1).unwrap();
        producer.push(lap * 2 + 1, 1).unwrap();
        assert!(matches!(producer.push(0, 1), Err(PushError::Full(0))));
        consumer.drain_into(&mut out, 2);
    }
    assert_eq!(out, (0..2000).collect::<Vec<_>>());
    assert_eq!(producer.overflow().items, 1000);
}

#[test]
fn len_counts_pushed_minus_taken_from_every_handle() {
    let (producer, mut consumer) = ring(8).unwrap();
    let handle = consumer.handle();
    assert!(producer.is_empty() && consumer.is_empty() && handle.is_empty());
    for i in 0..8 {
        producer.push(i, 1).unwrap();
    }
    assert_eq!((producer.len(), consumer.len(), handle.len()), (8, 8, 8));
    let _ = producer.push(8, 1);
    assert_eq!(handle.len(), 8);
    consumer.drain_into(&mut Vec::new(), 3);
    assert_eq!((producer.len(), consumer.len(), handle.len()), (5, 5, 5));
}

#[test]
fn wait_with_zero_timeout_on_empty_ring_times_out() {
    let (_producer, mut consumer) = ring::<u8>(2).unwrap();
    assert_eq!(consumer.wait(Duration::ZERO), WaitOutcome::TimedOut);
    assert_eq!(
        consumer.wait(Duration::from_millis(20)),
        WaitOutcome::TimedOut
    );
}

#[test]
fn wake_before_wait_makes_the_next_wait_return_at_once_only_once() {
    let (producer, mut consumer) = ring::<u8>(2).unwrap();
    producer.push(1, 1).unwrap();
    consumer.handle().wake();
    assert_eq!(
        consumer.wait(Duration::from_secs(30)),
        WaitOutcome::TimedOut
    );
    assert_eq!(consumer.wait(Duration::from_secs(30)), WaitOutcome::Ready);
}

#[test]
fn a_timed_out_wait_leaves_no_sleeping_flag_behind() {
    let (producer, mut consumer) = ring::<u8>(2).unwrap();
    assert_eq!(
        consumer.wait(Duration::from_millis(1)),
        WaitOutcome::TimedOut
    );
    assert_eq!(consumer.shared.tail_word() & SLEEPING, 0);
    producer.push(1, 1).unwrap();
    // The push found no sleeper, so it left no token.
    assert!(!*consumer.shared.token.lock().unwrap());
}

#[test]
fn dropping_the_consumer_closes_the_ring() {
    let (producer, consumer) = ring::<u8>(2).unwrap();
    drop(consumer);
    assert_eq!(producer.push(1, 1), Err(PushError::Closed(1)));
}

/// Counts its drops.
struct Tracked(StdArc<AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, StdOrdering::Relaxed);
    }
}

#[test]
fn items_left_in_the_ring_are_dropped_with_it_exactly_once() {
    let drops = StdArc::new(AtomicUsize::new(0));
    let (producer, mut consumer) = ring(4).unwrap();
    for _ in 0..4 {
        assert!(producer.push(Tracked(drops.clone()), 1).is_ok());
    }
    // A refused item comes back to the caller, who drops it.
    drop(producer.push(Tracked(drops.clone()), 1));
    assert_eq!(drops.load(StdOrdering::Relaxed), 1);
    drop(consumer.pop());
    assert_eq!(drops.load(StdOrdering::Relaxed), 2);
    drop(producer);
    drop(consumer);
    assert_eq!(drops.load(StdOrdering::Relaxed), 5);
}
