//! The ring under real contention: many producer threads, millions of items,
//! every item delivered once and in its producer's order, every refusal counted.

use std::thread;
use std::time::Duration;

use boundary_log_proxy::ring::{ring, Consumer, Producer, PushError, WaitOutcome};

/// Items per producer; fewer in debug builds to keep the run to a few seconds.
const PER_PRODUCER: u64 = if cfg!(debug_assertions) {
    1_000_000
} else {
    4_000_000
};
const PRODUCERS: u64 = 4;

/// (producer id, sequence number within that producer)
type Item = (u64, u64);

/// Pushes `count` items for `id`, retrying while the ring is full; returns the refusals.
fn push_with_retry(producer: &Producer<Item>, id: u64, count: u64) -> u64 {
    let mut refusals = 0;
    for seq in 0..count {
        let mut item = (id, seq);
        loop {
            match producer.push(item, 1) {
                Ok(()) => break,
                Err(PushError::Full(back)) => {
                    refusals += 1;
                    item = back;
                    thread::yield_now();
                }
                Err(PushError::Closed(_)) => panic!("ring closed under a producer"),
            }
        }
    }
    refusals
}

/// Drains until `total` items arrived, checking each producer's sequence as it goes.
fn drain_in_order(consumer: &mut Consumer<Item>, producers: u64, total: u64) {
    let mut next_seq = vec![0u64; producers as usize];
    let mut batch = Vec::with_capacity(256);
    let mut received = 0;
    while received < total {
        if consumer.wait(Duration::from_secs(10)) == WaitOutcome::TimedOut {
            panic!("no item for 10 s after {received} of {total}");
        }
        consumer.drain_into(&mut batch, 256);
        for (id, seq) in batch.drain(..) {
            assert_eq!(seq, next_seq[id as usize], "producer {id} out of order");
            next_seq[id as usize] += 1;
            received += 1;
        }
    }
    assert!(next_seq.iter().all(|&n| n == total / producers));
}

#[test]
fn many_producers_deliver_millions_of_items_once_each_in_producer_order() {
    let (producer, mut consumer) = ring::<Item>(1024).unwrap();
    let pushers: Vec<_> = (0..PRODUCERS)
        .map(|id| {
            let producer = producer.clone();
            thread::spawn(move || push_with_retry(&producer, id, PER_PRODUCER))
        })
        .collect();
    drain_in_order(&mut consumer, PRODUCERS, PRODUCERS * PER_PRODUCER);
    let refusals: u64 = pushers.into_iter().map(|p| p.join().unwrap()).sum();
    // Every retried refusal was counted, and nothing is left over.
    assert_eq!(producer.overflow().items, refusals);
    assert_eq!(producer.overflow().logs, refusals);
    assert_eq!(consumer.pop(), None);
    assert!(consumer.is_empty());
}

#[test]
fn overflowing_producers_account_for_every_item_and_log() {
    const PER: u64 = PER_PRODUCER / 4;
    let (producer, mut consumer) = ring::<Item>(16).unwrap();
    let pushers: Vec<_> = (0..PRODUCERS)
        .map(|id| {
            let producer = producer.clone();
            thread::spawn(move || {
                // Each item carries (seq % 7) + 1 logs; tally what comes back.
                let (mut refused_items, mut refused_logs) = (0u64, 0u64);
                for seq in 0..PER {
                    let logs = (seq % 7) as u32 + 1;
                    match producer.push((id, seq), logs) {
                        Ok(()) => {}
                        Err(PushError::Full(_)) => {
                            refused_items += 1;
                            refused_logs += u64::from(logs);
                        }
                        Err(PushError::Closed(_)) => panic!("ring closed under a producer"),
                    }
                }
                (refused_items, refused_logs)
            })
        })
        .collect();

    // Drain concurrently; items may be missing (refused) but never reordered or repeated.
    let mut last_seq = vec![None::<u64>; PRODUCERS as usize];
    let (mut drained_items, mut drained_logs) = (0u64, 0u64);
    let mut batch = Vec::new();
    let mut tally = |batch: &mut Vec<Item>| {
        for (id, seq) in batch.drain(..) {
            let last = &mut last_seq[id as usize];
            assert!(
                last.is_none_or(|l| seq > l),
                "producer {id}: {seq} after {last:?}"
            );
            *last = Some(seq);
            drained_items += 1;
            drained_logs += seq % 7 + 1;
        }
    };
    while pushers.iter().any(|p| !p.is_finished()) {
        assert!(consumer.len() <= consumer.capacity());
        consumer.drain_into(&mut batch, 8);
        tally(&mut batch);
    }
    let refused: Vec<(u64, u64)> = pushers.into_iter().map(|p| p.join().unwrap()).collect();
    consumer.drain_into(&mut batch, usize::MAX);
    tally(&mut batch);

    let refused_items: u64 = refused.iter().map(|r| r.0).sum();
    let refused_logs: u64 = refused.iter().map(|r| r.1).sum();
    let pushed_logs: u64 = PRODUCERS * (0..PER).map(|seq| seq % 7 + 1).sum::<u64>();
    assert!(refused_items > 0, "a 16-slot ring should overflow");
    assert_eq!(drained_items + refused_items, PRODUCERS * PER);
    assert_eq!(drained_logs + refused_logs, pushed_logs);
    assert_eq!(consumer.overflow().items, refused_items);
    assert_eq!(consumer.overflow().logs, refused_logs);
}
