//! The forwarder with a disk spool, in process, against a fake coderd: requests whose
//! retries ran out go to the spool instead of `forward_failed`, a filling ring moves
//! to disk while coderd fails, and once coderd is back the spooled logs arrive before
//! newer ones, each session in order, with the accounting invariant exact throughout.

mod support;

use std::time::Duration;

use boundary_log_proxy::config::{Config, IoMode};
use boundary_log_proxy::metrics::{Accounting, LogDropReason};
use support::coderd::{Behaviour, FakeCoderd};
use support::faults::{delivered, eventually, frames, write_frames, Proxy, PATIENCE};
use support::proxy::assert_accounting_totals;
use tonic::Code;

async fn send(proxy: &Proxy, frames: Vec<Vec<u8>>) -> usize {
    let mut client = proxy.connect();
    tokio::task::spawn_blocking(move || write_frames(&mut client, &frames))
        .await
        .unwrap()
}

fn spool_config(io: IoMode, tweak: impl FnOnce(&mut Config)) -> (tempfile::TempDir, Config) {
    let (dir, mut config) = Proxy::config(io);
    config.spool_dir = Some(dir.path().join("spool"));
    config.call_timeout = Duration::from_secs(2);
    tweak(&mut config);
    (dir, config)
}

/// Waits until every received log was delivered and nothing is held anywhere.
async fn wait_all_forwarded(proxy: &Proxy, logs: u64) -> bool {
    eventually(PATIENCE, || {
        let a = proxy.accounting();
        a.forwarded == logs && a.spooled == 0 && a.pending() == Some(0)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_that_run_out_go_to_the_spool_and_arrive_in_order_once_coderd_is_back() {
    let mut coderd = FakeCoderd::start().await;
    coderd.stop().await;
    let (dir, config) = spool_config(IoMode::Auto, |c| {
        c.retry_max_elapsed = Duration::from_millis(300);
    });
    let proxy = Proxy::start_grpc(dir, config, &coderd.addr()).await;
    assert_eq!(send(&proxy, frames("a", 0, 300, 4)).await, 300);
    assert_eq!(send(&proxy, frames("b", 0, 200, 5)).await, 200);
    assert!(proxy.wait_received(2200, PATIENCE).await);
    assert!(
        eventually(PATIENCE, || proxy.metrics().spool.logs_spooled.get()
            == 2200)
        .await,
        "every log spooled: {:?}",
        proxy.accounting()
    );
    let during = proxy.accounting();
    assert_eq!(during.spooled, 2200, "{during:?}");
    assert_eq!(during.settled(), 0, "nothing dropped: {during:?}");
    assert_accounting_totals(during, 0);

    // Newer logs of the same sessions arrive while the spool is still full.
    assert_eq!(send(&proxy, frames("a", 1200, 50, 4)).await, 50);
    assert!(proxy.wait_received(2400, PATIENCE).await);
    coderd.restart().await;
    assert!(
        wait_all_forwarded(&proxy, 2400).await,
        "{:?}",
        proxy.accounting()
    );

    let requests = coderd.requests();
    let got = delivered(&requests);
    assert_eq!(got["a"], (0..1400).collect::<Vec<_>>(), "each log once");
    assert_eq!(got["b"], (0..1000).collect::<Vec<_>>());
    // Arrival order per session: sequence numbers only go up.
    for session in ["a", "b"] {
        let seqs: Vec<i32> = requests
            .iter()
            .filter(|r| r.request.session_id == session)
            .flat_map(|r| r.request.logs.iter().map(|l| l.sequence_number))
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{session} in order");
    }
    assert_eq!(proxy.metrics().spool.logs_replayed.get(), 2400);
    let totals = proxy.close().await;
    assert_eq!(
        totals,
        Accounting {
            received: 2400,
            forwarded: 2400,
            ..Accounting::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_filling_while_coderd_fails_moves_to_the_spool_instead_of_overflowing() {
    let mut coderd = FakeCoderd::start().await;
    coderd.stop().await;
    let (dir, config) = spool_config(IoMode::Auto, |c| {
        c.ring_capacity = 64;
        // Long enough that no request runs out of retries during the test.
        c.retry_max_elapsed = Duration::from_secs(600);
    });
    let proxy = Proxy::start_grpc(dir, config, &coderd.addr()).await;
    // Let the forwarder see coderd failing before the flood.
    assert_eq!(send(&proxy, frames("s", 0, 1, 1)).await, 1);
    assert!(
        eventually(PATIENCE, || proxy.metrics().forward_requests_for(
            boundary_log_proxy::metrics::ForwardResult::RetryableError
        ) > 0)
        .await
    );
    let mut sent = 1;
    // Bursts well below the ring's size, faster than coderd (down) takes them.
    for chunk in 0..100 {
        let first = 1 + chunk * 20;
        sent += send(&proxy, frames("s", first, 20, 1)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sent, 2001);
    assert!(proxy.wait_received(2001, PATIENCE).await);
    assert_eq!(
        proxy.metrics().logs_dropped_for(LogDropReason::BufferFull),
        0,
        "a ring of 64 frames took 2001 frames without overflowing"
    );
    assert!(proxy.metrics().spool.logs_spooled.get() > 0);
    coderd.restart().await;
    assert!(
        wait_all_forwarded(&proxy, 2001).await,
        "{:?}",
        proxy.accounting()
    );
    assert_eq!(
        delivered(&coderd.requests())["s"],
        (0..2001).collect::<Vec<_>>()
    );
    let totals = proxy.close().await;
    assert_accounting_totals(totals, 0);
    assert_eq!(totals.settled(), 2001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_is_still_dropped_and_counted_not_spooled() {
    let coderd = FakeCoderd::start().await;
    coderd.set_behaviour(Behaviour::fail_all(Code::InvalidArgument));
    let (dir, config) = spool_config(IoMode::Auto, |_| {});
    let proxy = Proxy::start_grpc(dir, config, &coderd.addr()).await;
    assert_eq!(send(&proxy, frames("s", 0, 10, 3)).await, 10);
    assert!(
        proxy.wait_settled_at(30, PATIENCE).await,
        "{:?}",
        proxy.accounting()
    );
    let totals = proxy.close().await;
    assert_eq!(totals.dropped_forward_failed, 30);
    assert_eq!(totals.spooled, 0);
    assert_accounting_totals(totals, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_held_at_shutdown_is_spooled_and_replayed_by_the_next_server() {
    let mut coderd = FakeCoderd::start().await;
    coderd.stop().await;
    let spool_dir = tempfile::tempdir().unwrap();
    let (dir, mut config) = spool_config(IoMode::Auto, |c| {
        c.shutdown_timeout = Duration::from_millis(500);
    });
    config.spool_dir = Some(spool_dir.path().to_owned());
    let proxy = Proxy::start_grpc(dir, config.clone(), &coderd.addr()).await;
    assert_eq!(send(&proxy, frames("s", 0, 100, 10)).await, 100);
    assert!(proxy.wait_received(1000, PATIENCE).await);
    let first = proxy.close().await;
    assert_eq!(first.dropped_shutdown, 0, "{first:?}");
    assert_eq!(first.spooled, 1000, "{first:?}");
    assert_accounting_totals(first, 0);

    coderd.restart().await;
    let (dir, mut config) = spool_config(IoMode::Auto, |_| {});
    config.spool_dir = Some(spool_dir.path().to_owned());
    let proxy = Proxy::start_grpc(dir, config, &coderd.addr()).await;
    assert_eq!(proxy.accounting().recovered, 1000);
    assert!(
        wait_all_forwarded(&proxy, 1000).await,
        "{:?}",
        proxy.accounting()
    );
    assert_eq!(
        delivered(&coderd.requests())["s"],
        (0..1000).collect::<Vec<_>>()
    );
    let second = proxy.close().await;
    assert_eq!(
        second,
        Accounting {
            recovered: 1000,
            forwarded: 1000,
            ..Accounting::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_spool_at_start_replays_every_intact_record_and_counts_the_rest() {
    let mut coderd = FakeCoderd::start().await;
    coderd.stop().await;
    let spool_dir = tempfile::tempdir().unwrap();
    let (dir, mut config) = spool_config(IoMode::Auto, |c| {
        c.shutdown_timeout = Duration::from_millis(300);
        c.batch_max_logs = 100;
    });
    config.spool_dir = Some(spool_dir.path().to_owned());
    let proxy = Proxy::start_grpc(dir, config, &coderd.addr()).await;
    assert_eq!(send(&proxy, frames("s", 0, 100, 10)).await, 100);
    assert!(proxy.wait_received(1000, PATIENCE).await);
    assert_eq!(proxy.close().await.spooled, 1000);

    // One byte flipped in the middle of the first segment: the record holding it is lost.
    let segment = std::fs::read_dir(spool_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .min()
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&segment, &bytes).unwrap();

    coderd.restart().await;
    let (dir, mut config) = spool_config(IoMode::Auto, |_| {});
    config.spool_dir = Some(spool_dir.path().to_owned());
    let proxy = Proxy::start_grpc(dir, config, &coderd.addr()).await;
    let at_start = proxy.accounting();
    assert_eq!(at_start.recovered, 1000);
    let lost = at_start.dropped_spool_corrupt;
    assert!((1..=100).contains(&lost), "one request's logs: {lost}");
    assert!(
        wait_all_forwarded(&proxy, 1000 - lost).await,
        "{:?}",
        proxy.accounting()
    );
    let seqs = &delivered(&coderd.requests())["s"];
    assert_eq!(seqs.len() as u64, 1000 - lost, "every intact log, once");
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in order, around the gap"
    );
    let totals = proxy.close().await;
    assert_eq!(
        totals,
        Accounting {
            recovered: 1000,
            forwarded: 1000 - lost,
            dropped_spool_corrupt: lost,
            ..Accounting::default()
        }
    );
    assert_accounting_totals(totals, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_keeps_to_its_limit_and_what_it_cannot_take_waits_in_the_ring() {
    // 2000 logs (about 290 KB) against a 64 KiB spool: the spool fills, the rest
    // waits in the ring (400 frames, far under its 4096), nothing is dropped, and
    // everything is delivered once coderd is back.
    let mut coderd = FakeCoderd::start().await;
    coderd.stop().await;
    let (dir, config) = spool_config(IoMode::Auto, |c| {
        c.retry_max_elapsed = Duration::from_millis(100);
        c.batch_max_logs = 50;
        c.spool_max_bytes = 64 << 10;
    });
    let proxy = Proxy::start_grpc(dir, config, &coderd.addr()).await;
    assert_eq!(send(&proxy, frames("s", 0, 400, 5)).await, 400);
    assert!(proxy.wait_received(2000, PATIENCE).await);
    assert!(
        eventually(PATIENCE, || proxy.accounting().spooled > 0).await,
        "{:?}",
        proxy.accounting()
    );
    // Long enough for many retries (100 ms each) to have run out meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a = proxy.accounting();
    assert!(a.spooled < 2000, "the spool cannot hold them all: {a:?}");
    assert_eq!(
        a.settled(),
        0,
        "nothing dropped while the ring has room: {a:?}"
    );
    let bytes = proxy.metrics().spool.bytes.get() as u64;
    assert!(bytes <= 64 << 10, "{bytes} bytes on disk");
    coderd.restart().await;
    assert!(
        wait_all_forwarded(&proxy, 2000).await,
        "{:?}",
        proxy.accounting()
    );
    let totals = proxy.close().await;
    assert_eq!(totals.forwarded, 2000);
    assert_eq!(totals.dropped_spool_full, 0);
    assert_accounting_totals(totals, 0);
}
