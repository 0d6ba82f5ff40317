//! coderd misbehaving (down, flapping, slow, refusing) while boundary keeps writing:
//! every log the proxy received is delivered or counted under the right reason, and
//! each test ends with the accounting invariant checked exactly.

mod support;

use std::time::{Duration, Instant};

use boundary_log_proxy::config::{Config, IoMode};
use boundary_log_proxy::metrics::{Accounting, BatchDropReason, ForwardResult};
use support::coderd::{Behaviour, FakeCoderd};
use support::faults::{delivered, frames, soak, write_frames, Proxy, PATIENCE};
use support::proxy::assert_accounting_totals;
use tonic::Code;

/// Writes `frames` on a fresh connection from a blocking thread; returns how many
/// were written whole.
async fn send(proxy: &Proxy, frames: Vec<Vec<u8>>) -> usize {
    let mut client = proxy.connect();
    tokio::task::spawn_blocking(move || write_frames(&mut client, &frames))
        .await
        .unwrap()
}

fn requests(proxy: &Proxy, result: ForwardResult) -> u64 {
    proxy.metrics().forward_requests_for(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coderd_down_for_three_seconds_then_back_loses_nothing_the_ring_holds() {
    // scripts/soak.sh runs the 30 s outage of the brief.
    let outage_len = Duration::from_secs(soak("OUTAGE_SECS", 3));
    let mut coderd = FakeCoderd::start().await;
    coderd.stop().await;
    let outage = Instant::now();
    let (dir, config) = Proxy::config(IoMode::Auto);
    let config = Config {
        retry_max_elapsed: outage_len + Duration::from_secs(30),
        call_timeout: Duration::from_secs(2),
        ..config
    };
    let proxy = Proxy::start_grpc(dir, config, &coderd.addr()).await;

    assert_eq!(send(&proxy, frames("outage", 0, 500, 4)).await, 500);
    assert!(proxy.wait_received(2000, PATIENCE).await);
    tokio::time::sleep_until((outage + outage_len).into()).await;
    let during = proxy.accounting();
    assert_eq!(
        during.settled(),
        0,
        "nothing settled while down: {during:?}"
    );
    assert_accounting_totals(during, 2000);
    assert!(requests(&proxy, ForwardResult::RetryableError) > 0);
    assert_eq!(requests(&proxy, ForwardResult::PermanentError), 0);

    coderd.restart().await;
    assert!(
        proxy.wait_settled_at(2000, PATIENCE).await,
        "{:?}",
        proxy.accounting()
    );
    let got = delivered(&coderd.requests());
    assert_eq!(got.len(), 1);
    assert_eq!(
        got["outage"],
        (0..2000).collect::<Vec<_>>(),
        "each log once, all of them"
    );
    let totals = proxy.close().await;
    assert_eq!(
        totals,
        Accounting {
            received: 2000,
            forwarded: 2000,
            ..Accounting::default()
        }
    );
    assert_accounting_totals(totals, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coderd_down_with_a_small_ring_counts_only_the_overflow_as_buffer_full() {
    const CAPACITY: usize = 16;
    const LOGS: usize = 4;
    const FRAMES: usize = 200;
    // Frames held outside the ring while coderd is down (batch_max_logs / LOGS = 1
    // frame per request, a drain pass of batch_max_logs frames = PASS requests): one
    // being retried, the next request (waiting because it shares the retried one's
    // connection), the rest of the pass the delivery loop is handing out, one pass
    // queued in the channel, and one on the drain thread waiting to be queued.
    const PASS: usize = LOGS;
    const IN_FLIGHT: usize = 1 + 1 + 3 * PASS;

    let mut coderd = FakeCoderd::start().await;
    coderd.stop().await;
    let (dir, config) = Proxy::config(IoMode::Auto);
    let config = Config {
        ring_capacity: CAPACITY,
        batch_max_logs: LOGS as u32,
        retry_max_elapsed: Duration::from_secs(30),
        call_timeout: Duration::from_secs(2),
        ..config
    };
    let proxy = Proxy::start_grpc(dir, config, &coderd.addr()).await;

    assert_eq!(send(&proxy, frames("small", 0, FRAMES, LOGS)).await, FRAMES);
    let total = (FRAMES * LOGS) as u64;
    assert!(proxy.wait_received(total, PATIENCE).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = proxy.accounting();
    assert_eq!(during.forwarded, 0);
    assert_eq!(
        during.dropped_forward_failed + during.dropped_shutdown,
        0,
        "{during:?}"
    );
    // At the last overflow the ring was full; since then frames only moved from
    // the ring to the forwarder, which holds at most IN_FLIGHT of them.
    let held = during.pending().expect("no double count");
    let in_ring = (proxy.server.ring_len() * LOGS) as u64;
    assert!(
        (CAPACITY * LOGS) as u64 <= held && held <= ((CAPACITY + IN_FLIGHT) * LOGS) as u64,
        "held {held} logs: a full ring's worth plus what is in flight"
    );
    assert!(in_ring <= held && held - in_ring <= (IN_FLIGHT * LOGS) as u64);
    assert_accounting_totals(during, held);

    coderd.restart().await;
    assert!(
        proxy.wait_settled_at(total, PATIENCE).await,
        "{:?}",
        proxy.accounting()
    );
    let after = proxy.accounting();
    assert_eq!(after.forwarded, held, "everything held was delivered");
    assert_eq!(after.dropped_buffer_full, total - held);
    let frames_kept = held as usize / LOGS;
    assert_eq!(
        proxy
            .metrics()
            .batches_dropped_for(BatchDropReason::BufferFull),
        (FRAMES - frames_kept) as u64
    );
    // Which frames found room depends on when the drain thread freed slots; what
    // was kept arrives whole, once, and in the order it was sent.
    let arrival: Vec<i32> = coderd
        .requests()
        .iter()
        .flat_map(|r| r.request.logs.iter().map(|l| l.sequence_number))
        .collect();
    assert_eq!(arrival.len() as u64, held);
    assert!(arrival.windows(2).all(|w| w[0] < w[1]), "{arrival:?}");
    assert!(arrival
        .chunks(LOGS)
        .all(|f| f[0] % LOGS as i32 == 0 && f.windows(2).all(|w| w[1] == w[0] + 1)));

    let totals = proxy.close().await;
    assert_eq!(totals.dropped_forward_failed, 0);
    assert_eq!(totals.dropped_shutdown, 0);
    assert_accounting_totals(totals, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coderd_flapping_every_second_delivers_every_log() {
    let mut coderd = FakeCoderd::start().await;
    let (dir, config) = Proxy::config(IoMode::Auto);
    let config = Config {
        retry_max_elapsed: Duration::from_secs(30),
        call_timeout: Duration::from_secs(2),
        ..config
    };
    let proxy = Proxy::start_grpc(dir, config, &coderd.addr()).await;

    // Frames of 3 logs, one every 20 ms, while coderd goes down and up each second.
    let flaps = soak("FLAPS", 3);
    let frame_count = 100 * flaps as usize;
    let logs = 3 * frame_count as u64;
    let mut client = proxy.connect();
    let writer = tokio::task::spawn_blocking(move || {
        let mut written = 0;
        for frame in frames("flap", 0, frame_count, 3) {
            written += write_frames(&mut client, &[frame]);
            std::thread::sleep(Duration::from_millis(20));
        }
        written
    });
    for _ in 0..flaps {
        tokio::time::sleep(Duration::from_secs(1)).await;
        coderd.stop().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        coderd.restart().await;
    }
    assert_eq!(writer.await.unwrap(), frame_count);

    assert!(
        proxy.wait_settled_at(logs, PATIENCE).await,
        "{:?}",
        proxy.accounting()
    );
    assert!(
        requests(&proxy, ForwardResult::RetryableError) > 0,
        "the outages were felt"
    );
    let mut got = delivered(&coderd.requests()).remove("flap").unwrap();
    let copies = got.len();
    got.dedup();
    assert_eq!(
        got,
        (0..logs as i32).collect::<Vec<_>>(),
        "every log arrived"
    );
    assert!(copies as u64 >= logs);
    let totals = proxy.close().await;
    assert_eq!(
        totals,
        Accounting {
            received: logs,
            forwarded: logs,
            ..Accounting::default()
        }
    );
    assert_accounting_totals(totals, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coderd_slow_overflows_the_ring_and_only_buffer_full_moves() {
    let coderd = FakeCoderd::start().await;
    coderd.set_behaviour(Behaviour::normal().with_delay(Duration::from_millis(250)));
    let (dir, config) = Proxy::config(IoMode::Auto);
    let config = Config {
        ring_capacity: 8,
        batch_max_logs: 2,
        call_timeout: Duration::from_secs(5),
        ..config
    };
    let proxy = Proxy::start_grpc(dir, config, &coderd.addr()).await;

    let (a, b) = tokio::join!(
        send(&proxy, frames("slow-a", 0, 60, 2)),
        send(&proxy, frames("slow-b", 0, 60, 2)),
    );
    assert_eq!((a, b), (60, 60));
    assert!(proxy.wait_received(240, PATIENCE).await);
    assert!(
        proxy.wait_settled_at(240, PATIENCE).await,
        "{:?}",
        proxy.accounting()
    );

    let settled = proxy.accounting();
    assert!(
        settled.dropped_buffer_full > 0,
        "the ring overflowed: {settled:?}"
    );
    assert_eq!(settled.dropped_forward_failed, 0);
    assert_eq!(settled.dropped_shutdown, 0);
    assert_eq!(requests(&proxy, ForwardResult::RetryableError), 0);
    assert_eq!(requests(&proxy, ForwardResult::PermanentError), 0);
    assert_eq!(requests(&proxy, ForwardResult::Ok), coderd.calls());
    assert_eq!(coderd.logs_received() as u64, settled.forwarded);

    let totals = proxy.close().await;
    assert_eq!(totals, settled, "nothing left for shutdown");
    assert_accounting_totals(totals, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coderd_refusing_with_permission_denied_drops_at_once_without_retries() {
    let coderd = FakeCoderd::start().await;
    coderd.set_behaviour(Behaviour::fail_all(Code::PermissionDenied));
    let (dir, config) = Proxy::config(IoMode::Auto);
    let config = Config {
        // One frame per request, so calls = requests when nothing is retried.
        batch_max_logs: 2,
        retry_max_elapsed: Duration::from_secs(60),
        ..config
    };
    let proxy = Proxy::start_grpc(dir, config, &coderd.addr()).await;

    assert_eq!(send(&proxy, frames("denied", 0, 50, 2)).await, 50);
    // Far less than the retry budget: a retried request would still be pending.
    assert!(
        proxy.wait_settled_at(100, Duration::from_secs(10)).await,
        "{:?}",
        proxy.accounting()
    );
    let refused = proxy.accounting();
    assert_eq!(refused.dropped_forward_failed, 100);
    assert_eq!(refused.forwarded, 0);
    assert_eq!(
        proxy
            .metrics()
            .batches_dropped_for(BatchDropReason::ForwardFailed),
        50
    );
    assert_eq!(coderd.calls(), 50, "one call per request: no retries");
    assert_eq!(
        requests(&proxy, ForwardResult::PermanentError),
        coderd.calls()
    );
    assert_eq!(requests(&proxy, ForwardResult::RetryableError), 0);

    // Once coderd accepts again, new logs go through.
    coderd.set_behaviour(Behaviour::normal());
    assert_eq!(send(&proxy, frames("denied", 100, 5, 2)).await, 5);
    assert!(proxy.wait_settled_at(110, PATIENCE).await);
    assert_eq!(
        delivered(&coderd.requests())["denied"],
        (100..110).collect::<Vec<_>>()
    );
    let totals = proxy.close().await;
    assert_eq!(
        totals,
        Accounting {
            received: 110,
            forwarded: 10,
            dropped_forward_failed: 100,
            ..Accounting::default()
        }
    );
    assert_accounting_totals(totals, 0);
}
