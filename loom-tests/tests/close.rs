//! Model (e): close racing with pushes and with the draining consumer; every
//! push either lands and is drained, or is refused as Closed. Nothing is lost.

use std::time::Duration;

use boundary_ring_loom::explore;
use boundary_ring_loom::ring::{ring, PushError, WaitOutcome};
use loom::thread;

#[test]
fn close_racing_pushes_and_drain_loses_nothing() {
    explore("close_racing_pushes_and_drain_loses_nothing", || {
        let (producer, mut consumer) = ring::<u32>(4).unwrap();
        let handle = consumer.handle();
        let pushers: Vec<_> = [10, 20]
            .into_iter()
            .map(|item| {
                let producer = producer.clone();
                thread::spawn(move || match producer.push(item, 1) {
                    Ok(()) => Some(item),
                    Err(PushError::Closed(back)) => {
                        assert_eq!(back, item);
                        None
                    }
                    Err(PushError::Full(_)) => panic!("four slots cannot fill with two items"),
                })
            })
            .collect();
        let closer = thread::spawn(move || handle.close());

        // Drain until the ring reports closed and empty (waits are untimed under loom).
        let mut drained = Vec::new();
        loop {
            match consumer.wait(Duration::from_secs(3600)) {
                WaitOutcome::Ready => {
                    consumer.drain_into(&mut drained, usize::MAX);
                }
                WaitOutcome::Closed => break,
                WaitOutcome::TimedOut => panic!("nobody called wake"),
            }
        }
        closer.join().unwrap();
        let mut landed: Vec<u32> = pushers
            .into_iter()
            .filter_map(|p| p.join().unwrap())
            .collect();
        drained.sort_unstable();
        landed.sort_unstable();
        assert_eq!(drained, landed);
        assert_eq!(producer.overflow().items, 0);
        assert!(producer.is_closed());
    });
}
