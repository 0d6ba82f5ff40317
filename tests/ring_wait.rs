//! The consumer's sleep with real threads: woken by pushes, `wake` and `close`,
//! timing out when nothing comes, and never missing a wake-up.

use std::thread;
use std::time::{Duration, Instant};

use boundary_log_proxy::ring::{ring, PushError, WaitOutcome};

/// Long enough that a lost wake-up fails the test instead of passing slowly.
const LONG: Duration = Duration::from_secs(20);

#[test]
fn a_sleeping_consumer_wakes_for_a_push_from_another_thread() {
    let (producer, mut consumer) = ring::<u32>(4).unwrap();
    let pusher = thread::spawn(move || {
        thread::sleep(Duration::from_millis(30));
        producer.push(5, 1).unwrap();
    });
    assert_eq!(consumer.wait(LONG), WaitOutcome::Ready);
    assert_eq!(consumer.pop(), Some(5));
    pusher.join().unwrap();
}

#[test]
fn wait_on_an_empty_ring_times_out_after_the_timeout() {
    let (_producer, mut consumer) = ring::<u32>(4).unwrap();
    let started = Instant::now();
    assert_eq!(
        consumer.wait(Duration::from_millis(50)),
        WaitOutcome::TimedOut
    );
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[test]
fn wake_from_another_thread_ends_a_long_wait() {
    let (_producer, mut consumer) = ring::<u32>(4).unwrap();
    let handle = consumer.handle();
    let waker = thread::spawn(move || {
        thread::sleep(Duration::from_millis(30));
        handle.wake();
    });
    assert_eq!(consumer.wait(LONG), WaitOutcome::TimedOut);
    waker.join().unwrap();
}

#[test]
fn close_from_another_thread_ends_a_wait_with_closed() {
    let (producer, mut consumer) = ring::<u32>(4).unwrap();
    let handle = consumer.handle();
    let closer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(30));
        handle.close();
    });
    assert_eq!(consumer.wait(LONG), WaitOutcome::Closed);
    closer.join().unwrap();
    assert_eq!(producer.push(1, 1), Err(PushError::Closed(1)));
}

#[test]
fn ping_pong_through_two_rings_never_loses_a_wake_up() {
    // Each side sleeps before every item, so each round exercises the
    // SLEEPING handshake; a lost wake-up stalls a wait until LONG passes.
    const ROUNDS: u32 = if cfg!(debug_assertions) {
        20_000
    } else {
        100_000
    };
    let (ping, mut ping_rx) = ring::<u32>(2).unwrap();
    let (pong, mut pong_rx) = ring::<u32>(2).unwrap();
    let echo = thread::spawn(move || {
        for _ in 0..ROUNDS {
            assert_eq!(ping_rx.wait(LONG), WaitOutcome::Ready);
            let n = ping_rx.pop().unwrap();
            pong.push(n, 1).unwrap();
        }
    });
    for n in 0..ROUNDS {
        ping.push(n, 1).unwrap();
        assert_eq!(pong_rx.wait(LONG), WaitOutcome::Ready, "round {n}");
        assert_eq!(pong_rx.pop(), Some(n));
    }
    echo.join().unwrap();
}

#[test]
fn short_timeouts_racing_pushes_lose_no_item() {
    // Timed-out waits retract SLEEPING while pushes clear it: stale tokens
    // and failed retractions must neither lose nor duplicate an item.
    const ITEMS: u32 = if cfg!(debug_assertions) {
        20_000
    } else {
        200_000
    };
    let (producer, mut consumer) = ring::<u32>(8).unwrap();
    let pusher = thread::spawn(move || {
        for n in 0..ITEMS {
            let mut item = n;
            while let Err(PushError::Full(back)) = producer.push(item, 1) {
                item = back;
                thread::yield_now();
            }
            if n % 64 == 0 {
                thread::sleep(Duration::from_micros(50));
            }
        }
    });
    let mut next = 0;
    let mut batch = Vec::new();
    let mut timeouts = 0u32;
    while next < ITEMS {
        if consumer.wait(Duration::from_micros(20)) == WaitOutcome::TimedOut {
            timeouts += 1;
        }
        consumer.drain_into(&mut batch, usize::MAX);
        for n in batch.drain(..) {
            assert_eq!(n, next);
            next += 1;
        }
    }
    pusher.join().unwrap();
    assert!(timeouts > 0, "the race this test is about never happened");
    assert_eq!(consumer.pop(), None);
}

#[test]
fn close_keeps_pushed_items_drainable_then_reports_closed() {
    let (producer, mut consumer) = ring::<u32>(8).unwrap();
    let pushers: Vec<_> = (0..2u32)
        .map(|id| {
            let producer = producer.clone();
            thread::spawn(move || {
                let mut landed = Vec::new();
                for n in 0..100_000u32 {
                    let item = id * 1_000_000 + n;
                    match producer.push(item, 1) {
                        Ok(()) => landed.push(item),
                        Err(PushError::Full(_)) => thread::yield_now(),
                        Err(PushError::Closed(_)) => break,
                    }
                }
                landed
            })
        })
        .collect();
    let handle = consumer.handle();
    let closer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(5));
        handle.close();
    });
    let mut drained = Vec::new();
    loop {
        match consumer.wait(LONG) {
            WaitOutcome::Ready => {
                consumer.drain_into(&mut drained, usize::MAX);
            }
            WaitOutcome::Closed => break,
            WaitOutcome::TimedOut => panic!("wait timed out with pushers running or closed"),
        }
    }
    closer.join().unwrap();
    let mut landed: Vec<u32> = pushers
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    landed.sort_unstable();
    drained.sort_unstable();
    assert_eq!(drained, landed);
}
