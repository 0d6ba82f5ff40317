//! A full ring holds the reader back while the forwarder drains it, so the writers
//! meet socket back-pressure instead of losing frames; only a ring that stays full
//! for the reader's patience (the destination slow or down) drops, as `buffer_full`.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use boundary_log_proxy::codec::Tag;
use boundary_log_proxy::intake::{Intake, QueuedFrame};
use boundary_log_proxy::metrics::Metrics;
use boundary_log_proxy::reader::{ConnInfo, ConnectionHandler};
use boundary_log_proxy::ring::{ring, Consumer};
use boundary_log_proxy::seqgap::SeqTracker;
use boundary_log_proxy::workload;

/// `frames` frames of 10 logs of one session, numbered on from `first_frame`.
fn frames(first_frame: i32, frames: i32) -> Vec<u8> {
    let mut out = Vec::new();
    for f in first_frame..first_frame + frames {
        let request = workload::request("session", "codex", f * 10, 10);
        workload::append_frame(Tag::V2, &request, &mut out).unwrap();
    }
    out
}

fn intake(capacity: usize, patience: Duration) -> (Intake, Consumer<QueuedFrame>, Arc<Metrics>) {
    let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    let (producer, consumer) = ring(capacity).unwrap();
    let intake =
        Intake::new(producer, metrics.clone(), SeqTracker::default()).with_patience(patience);
    (intake, consumer, metrics)
}

fn info() -> ConnInfo {
    ConnInfo {
        id: 1,
        peer_uid: None,
        peer_pid: None,
    }
}

#[test]
fn a_full_ring_holds_the_reader_back_while_the_forwarder_drains_it() {
    // Patience far longer than the drain takes: nothing may be dropped.
    let (intake, mut consumer, metrics) = intake(2, Duration::from_secs(30));
    let mut conn = intake.open(&info());
    assert_eq!(
        intake.data(&mut conn, &frames(0, 2)),
        ControlFlow::Continue(())
    );
    assert_eq!(consumer.len(), 2, "the ring is full");

    let drained = thread::spawn(move || {
        let mut seqs = Vec::new();
        while seqs.len() < 5 {
            // A forwarder late by a moment, each time.
            thread::sleep(Duration::from_millis(20));
            if let Some(queued) = consumer.pop() {
                seqs.push(queued.frame.seq().first);
            }
        }
        seqs
    });
    let started = Instant::now();
    assert_eq!(
        intake.data(&mut conn, &frames(2, 3)),
        ControlFlow::Continue(())
    );
    assert!(
        started.elapsed() >= Duration::from_millis(20),
        "the reader waited"
    );
    assert_eq!(
        drained.join().unwrap(),
        [0, 10, 20, 30, 40],
        "every frame, in order"
    );
    let totals = metrics.accounting();
    assert_eq!(totals.received, 50);
    assert_eq!(totals.dropped_buffer_full, 0);
}

#[test]
fn a_ring_that_stays_full_drops_after_the_patience_and_waits_again_once_it_had_room() {
    let patience = Duration::from_millis(50);
    let (intake, mut consumer, metrics) = intake(2, patience);
    let mut conn = intake.open(&info());
    assert_eq!(
        intake.data(&mut conn, &frames(0, 2)),
        ControlFlow::Continue(())
    );

    // Nothing drains: the first frame waits out the patience, then all are dropped.
    let started = Instant::now();
    assert_eq!(
        intake.data(&mut conn, &frames(2, 3)),
        ControlFlow::Continue(())
    );
    assert!(started.elapsed() >= patience);
    assert_eq!(metrics.accounting().dropped_buffer_full, 30);

    // Room again: the next frame is kept, and the next full ring is waited for again.
    consumer.pop().unwrap();
    assert_eq!(
        intake.data(&mut conn, &frames(5, 1)),
        ControlFlow::Continue(())
    );
    assert_eq!(consumer.len(), 2);
    let started = Instant::now();
    assert_eq!(
        intake.data(&mut conn, &frames(6, 1)),
        ControlFlow::Continue(())
    );
    assert!(
        started.elapsed() >= patience,
        "patient again after room came"
    );
    let totals = metrics.accounting();
    assert_eq!(totals.dropped_buffer_full, 40);
    assert_eq!(totals.received, 70);
}
