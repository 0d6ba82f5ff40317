//! Model (f): items still in the ring when its last handle goes are dropped by the
//! ring, exactly once, while pushes race the consumer's own drop on a ring of two
//! slots that can fill. Every item made is dropped once: by the consumer that took it,
//! by the pusher it was refused to, or by the ring.

use boundary_ring_loom::explore;
use boundary_ring_loom::ring::ring;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

/// Counts its drops.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn items_left_in_the_ring_are_dropped_exactly_once() {
    explore("items_left_in_the_ring_are_dropped_exactly_once", || {
        let drops = Arc::new(AtomicUsize::new(0));
        let (producer, mut consumer) = ring::<Counted>(2).unwrap();
        let pushers: Vec<_> = (0..2)
            .map(|_| {
                let (producer, drops) = (producer.clone(), Arc::clone(&drops));
                thread::spawn(move || {
                    // Refused (full or closed): the error hands the item back, dropped here.
                    let _ = producer.push(Counted(Arc::clone(&drops)), 1);
                    let _ = producer.push(Counted(drops), 1);
                })
            })
            .collect();
        // The consumer takes at most one, then goes while pushes may still land.
        let mut taken = Vec::new();
        consumer.drain_into(&mut taken, 1);
        drop(taken);
        drop(consumer);
        for pusher in pushers {
            pusher.join().unwrap();
        }
        drop(producer);
        assert_eq!(drops.load(Ordering::SeqCst), 4, "each of the 4 items dropped once");
    });
}
