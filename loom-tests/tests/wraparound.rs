//! Model (c): batch drains racing with pushes on a two-slot ring for several laps,
//! so a slot is refilled while the consumer is still mid-batch on the other.
//!
//! One producer: a second one that also retried on Full would give loom two
//! threads yield-spinning on a third one's unpublished slot, which loom explores
//! as an endless schedule. Two producers on a tiny ring are modelled, without
//! retries, in `accounting.rs`.

use boundary_ring_loom::explore;
use boundary_ring_loom::ring::{ring, PushError};
use loom::thread;

/// Four laps of two slots.
const ITEMS: u32 = 8;

#[test]
fn batch_drain_racing_pushes_across_laps_keeps_every_item_in_order() {
    explore(
        "batch_drain_racing_pushes_across_laps_keeps_every_item_in_order",
        || {
            let (producer, mut consumer) = ring::<u32>(2).unwrap();
            let pusher = thread::spawn(move || {
                for item in 0..ITEMS {
                    let mut item = item;
                    // Full is expected on two slots: yield to the consumer and retry.
                    while let Err(PushError::Full(back)) = producer.push(item, 1) {
                        item = back;
                        thread::yield_now();
                    }
                }
            });

            let mut got = Vec::new();
            while got.len() < ITEMS as usize {
                if consumer.drain_into(&mut got, usize::MAX) == 0 {
                    thread::yield_now();
                }
            }
            pusher.join().unwrap();
            assert_eq!(got, (0..ITEMS).collect::<Vec<_>>());
            assert_eq!(consumer.pop(), None);
        },
    );
}
