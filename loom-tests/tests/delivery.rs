//! Model (a): two producers and one sleeping consumer; every item arrives exactly
//! once and each producer's items arrive in the order it pushed them.

use std::time::Duration;

use boundary_ring_loom::explore;
use boundary_ring_loom::ring::{ring, WaitOutcome};
use loom::thread;

const PER_PRODUCER: u32 = 2;

#[test]
fn two_producers_deliver_every_item_once_in_each_producers_order() {
    explore(
        "two_producers_deliver_every_item_once_in_each_producers_order",
        || {
            // Room for everything: no push may be refused here.
            let (producer, mut consumer) = ring::<(u32, u32)>(4).unwrap();
            let pushers: Vec<_> = (0..2)
                .map(|id| {
                    let producer = producer.clone();
                    thread::spawn(move || {
                        for seq in 0..PER_PRODUCER {
                            producer.push((id, seq), 1).unwrap();
                        }
                    })
                })
                .collect();
            drop(producer);

            let mut got = Vec::new();
            while got.len() < 2 * PER_PRODUCER as usize {
                // Untimed under loom: a lost wake-up deadlocks the model.
                assert_eq!(consumer.wait(Duration::from_secs(60)), WaitOutcome::Ready);
                assert!(consumer.drain_into(&mut got, usize::MAX) > 0);
            }
            for pusher in pushers {
                pusher.join().unwrap();
            }
            assert_eq!(consumer.pop(), None);
            for id in 0..2 {
                let order: Vec<u32> = got.iter().filter(|i| i.0 == id).map(|i| i.1).collect();
                assert_eq!(
                    order,
                    (0..PER_PRODUCER).collect::<Vec<_>>(),
                    "producer {id}: {got:?}"
                );
            }
        },
    );
}
