//! Model (d): a consumer asleep on an empty ring is always woken by a push.
//! Waits are untimed under loom, so a lost wake-up is a deadlock loom reports.

use std::time::Duration;

use boundary_ring_loom::explore;
use boundary_ring_loom::ring::{ring, WaitOutcome};
use loom::thread;

const FOREVER: Duration = Duration::from_secs(3600);

#[test]
fn a_waiting_consumer_is_woken_by_a_push() {
    explore("a_waiting_consumer_is_woken_by_a_push", || {
        let (producer, mut consumer) = ring::<u32>(2).unwrap();
        let pusher = thread::spawn(move || producer.push(7, 1).unwrap());
        assert_eq!(consumer.wait(FOREVER), WaitOutcome::Ready);
        assert_eq!(consumer.pop(), Some(7));
        pusher.join().unwrap();
    });
}

#[test]
fn a_consumer_sleeping_twice_is_woken_by_each_push() {
    explore("a_consumer_sleeping_twice_is_woken_by_each_push", || {
        let (producer, mut consumer) = ring::<u32>(2).unwrap();
        let pusher = thread::spawn(move || {
            producer.push(1, 1).unwrap();
            producer.push(2, 1).unwrap();
        });
        let mut got = Vec::new();
        while got.len() < 2 {
            assert_eq!(consumer.wait(FOREVER), WaitOutcome::Ready);
            consumer.drain_into(&mut got, usize::MAX);
        }
        assert_eq!(got, vec![1, 2]);
        pusher.join().unwrap();
    });
}

#[test]
fn a_wake_racing_a_push_leaves_the_item_and_no_stuck_flag() {
    // wake() takes the same exit as a timeout: the consumer retracts SLEEPING
    // by CAS, and a push that beat the retraction owes it a (now stale) token.
    explore(
        "a_wake_racing_a_push_leaves_the_item_and_no_stuck_flag",
        || {
            let (producer, mut consumer) = ring::<u32>(2).unwrap();
            let handle = consumer.handle();
            let pusher = thread::spawn(move || producer.push(7, 1).unwrap());
            let waker = thread::spawn(move || handle.wake());
            let first = consumer.wait(FOREVER);
            assert!(matches!(first, WaitOutcome::Ready | WaitOutcome::TimedOut));
            pusher.join().unwrap();
            waker.join().unwrap();
            // The wake may still be pending: it ends at most one more wait early.
            let mut waits = 0;
            while consumer.wait(FOREVER) != WaitOutcome::Ready {
                waits += 1;
                assert!(waits <= 1, "a wake ended more than one wait");
            }
            assert_eq!(consumer.pop(), Some(7));
        },
    );
}

#[test]
fn wake_ends_a_wait_on_an_empty_ring() {
    explore("wake_ends_a_wait_on_an_empty_ring", || {
        let (_producer, mut consumer) = ring::<u32>(2).unwrap();
        let handle = consumer.handle();
        let waker = thread::spawn(move || handle.wake());
        // Untimed under loom: a lost wake() deadlocks the model.
        assert_eq!(consumer.wait(FOREVER), WaitOutcome::TimedOut);
        waker.join().unwrap();
    });
}
