//! Model (b): on a tiny ring that overflows, every pushed item and every log is
//! either drained or counted as overflow, exactly.

use boundary_ring_loom::explore;
use boundary_ring_loom::ring::{ring, PushError};
use loom::thread;

/// Item `i` carries `1 << i` logs, so any wrong log total names the culprits.
fn logs_of(item: u32) -> u32 {
    1 << item
}

#[test]
fn pushed_equals_drained_plus_overflowed_in_items_and_logs() {
    explore(
        "pushed_equals_drained_plus_overflowed_in_items_and_logs",
        || {
            let (producer, mut consumer) = ring::<u32>(2).unwrap();
            let pushers: Vec<_> = [[0, 1, 2], [3, 4, 5]]
                .into_iter()
                .map(|items| {
                    let producer = producer.clone();
                    thread::spawn(move || {
                        let mut refused = Vec::new();
                        for item in items {
                            match producer.push(item, logs_of(item)) {
                                Ok(()) => {}
                                Err(PushError::Full(back)) => refused.push(back),
                                Err(PushError::Closed(_)) => panic!("nobody closed the ring"),
                            }
                        }
                        refused
                    })
                })
                .collect();

            // Drain while the pushes run, then the rest. The yields let the pushers
            // run first: loom does not otherwise schedule a freshly spawned thread
            // whose first access is a load ahead of this one (tokio-rs/loom#392).
            let mut drained = Vec::new();
            for _ in 0..2 {
                thread::yield_now();
                consumer.drain_into(&mut drained, 2);
            }
            let refused: Vec<u32> = pushers
                .into_iter()
                .flat_map(|p| p.join().unwrap())
                .collect();
            consumer.drain_into(&mut drained, usize::MAX);

            let overflow = producer.overflow();
            assert_eq!(overflow.items, refused.len() as u64);
            assert_eq!(
                overflow.logs,
                refused.iter().map(|&i| u64::from(logs_of(i))).sum::<u64>()
            );
            let mut all: Vec<u32> = drained.iter().chain(&refused).copied().collect();
            all.sort_unstable();
            assert_eq!(
                all,
                (0..6).collect::<Vec<_>>(),
                "drained {drained:?} refused {refused:?}"
            );
        },
    );
}
