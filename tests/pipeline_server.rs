//! The whole pipeline through the library API: `Server` on a real Unix socket, the
//! forwarder's gRPC reporter, and a real tonic server (the fake coderd) on loopback.
//! Every test that moves logs ends by checking the accounting invariant exactly.

mod support;

use std::time::Duration;

use boundary_log_proxy::codec::Tag;
use boundary_log_proxy::config::IoMode;
use boundary_log_proxy::metrics::{BatchDropReason, ForwardResult, LogDropReason};
use boundary_log_proxy::proto::agent::boundary_log::{HttpRequest, Resource};
use boundary_log_proxy::proto::agent::ReportBoundaryLogsRequest;
use boundary_log_proxy::ServerError;
use prost::Message as _;
use support::coderd::{Behaviour, FakeCoderd};
use support::proxy::{
    all_logs, assert_accounting, eventually, grpc_reporter, logs_by_session, request, vector,
    TestProxy, PATIENCE,
};
use tonic::Code;

const SESSION: &str = "0b6c4e3a-7f2d-4c1e-9a8b-5d6e7f8a9b0c";

fn decoded(coderd: &FakeCoderd) -> Vec<ReportBoundaryLogsRequest> {
    coderd.requests().into_iter().map(|r| r.request).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_creates_the_socket_close_removes_it_and_start_twice_is_an_error() {
    let proxy = TestProxy::start(IoMode::Auto, |_| {});
    eprintln!("--io auto chose {}", proxy.backend);
    let path = proxy.server.socket_path().to_owned();
    let meta = std::fs::symlink_metadata(&path).expect("socket file exists after start");
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));

    assert!(matches!(
        proxy.server.start(),
        Err(ServerError::AlreadyStarted)
    ));
    // The failed second start left the first one serving.
    proxy.connect().send(&vector("v1_single.bin"));
    proxy.wait_received(1).await;

    proxy.close().await;
    assert!(!path.exists(), "close removes the socket file");
    assert!(matches!(proxy.server.start(), Err(ServerError::Closed)));
    let ran = proxy
        .server
        .run_forwarder(Default::default(), grpc_reporter("http://127.0.0.1:1"))
        .await;
    assert!(matches!(ran, Err(ServerError::Closed)), "{ran:?}");
    assert_eq!(proxy.metrics().logs_dropped_for(LogDropReason::Shutdown), 1);
    assert_accounting(proxy.metrics(), 0);
}

async fn one_log_arrives_with_every_field_intact(io: IoMode) {
    let coderd = FakeCoderd::start().await;
    let proxy = TestProxy::start(io, |_| {});
    let forwarder = proxy.forward(grpc_reporter(&coderd.addr()));
    let sent = ReportBoundaryLogsRequest {
        logs: vec![boundary_log_proxy::proto::agent::BoundaryLog {
            allowed: true,
            time: Some(prost_types::Timestamp {
                seconds: 1_764_115_321,
                nanos: 987_654_321,
            }),
            resource: Some(Resource::HttpRequest(HttpRequest {
                method: "PATCH".into(),
                url: "https://api.github.com/repos/coder/coder/issues/42?x=1&y=%20".into(),
                matched_rule: "domain=api.github.com path=/repos/*".into(),
            })),
            sequence_number: 4242,
        }],
        session_id: SESSION.into(),
        confined_process_name: "claude-code".into(),
    };
    proxy.connect().send_request(Tag::V2, &sent);
    assert!(coderd.wait_for_logs(1, PATIENCE).await);
    proxy.wait_forwarded(1).await;

    let got = coderd.requests();
    assert_eq!(got.len(), 1);
    let req = &got[0].request;
    assert_eq!(req.session_id, SESSION);
    assert_eq!(req.confined_process_name, "claude-code");
    let log = &req.logs[0];
    assert!(log.allowed);
    assert_eq!(log.sequence_number, 4242);
    let time = log.time.expect("timestamp kept");
    assert_eq!((time.seconds, time.nanos), (1_764_115_321, 987_654_321));
    let Some(Resource::HttpRequest(http)) = &log.resource else {
        panic!("http_request kept: {log:?}");
    };
    assert_eq!(http.method, "PATCH");
    assert_eq!(
        http.url,
        "https://api.github.com/repos/coder/coder/issues/42?x=1&y=%20"
    );
    assert_eq!(http.matched_rule, "domain=api.github.com path=/repos/*");
    assert_eq!(req, &sent, "nothing else changed");
    assert_eq!(
        got[0].raw,
        sent.encode_to_vec(),
        "the wire bytes are coderd's"
    );
    assert_eq!(got[0].token, None, "no token configured, none sent");

    forwarder.stop().await;
    proxy.close().await;
    assert_eq!(proxy.metrics().batches_forwarded.get(), 1);
    assert_accounting(proxy.metrics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_messages_on_one_connection_arrive_in_order() {
    let coderd = FakeCoderd::start().await;
    let proxy = TestProxy::start(IoMode::Auto, |_| {});
    let forwarder = proxy.forward(grpc_reporter(&coderd.addr()));
    let sent: Vec<_> = (0..25)
        .map(|i| request(SESSION, "codex", i * 4, 4))
        .collect();
    let mut client = proxy.connect();
    for r in &sent {
        client.send_request(Tag::V2, r);
    }
    assert!(coderd.wait_for_logs(100, PATIENCE).await);
    proxy.wait_forwarded(100).await;
    assert_eq!(all_logs(&decoded(&coderd)), all_logs(&sent));

    forwarder.stop().await;
    proxy.close().await;
    assert_eq!(proxy.metrics().batches_forwarded.get(), 25);
    assert_accounting(proxy.metrics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_concurrent_connections_each_keep_their_order() {
    let coderd = FakeCoderd::start().await;
    let proxy = TestProxy::start(IoMode::Auto, |_| {});
    let forwarder = proxy.forward(grpc_reporter(&coderd.addr()));
    let sessions = ["session-a", "session-b", "session-c"];
    let writers: Vec<_> = sessions
        .iter()
        .map(|&session| {
            let mut client = proxy.connect();
            std::thread::spawn(move || {
                let sent: Vec<_> = (0..40)
                    .map(|i| request(session, "claude-code", i * 3, 3))
                    .collect();
                for r in &sent {
                    client.send_request(Tag::V2, r);
                }
                sent
            })
        })
        .collect();
    let sent: Vec<Vec<_>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    // The writers dropped their connections: the gauge goes back to zero.
    let metrics = proxy.metrics().clone();
    eventually("no open connections", || metrics.connections.get() == 0).await;
    assert!(coderd.wait_for_logs(3 * 120, PATIENCE).await);
    proxy.wait_forwarded(360).await;

    let got = logs_by_session(&decoded(&coderd));
    assert_eq!(got.len(), 3);
    for (session, sent) in sessions.iter().zip(&sent) {
        let key = (session.to_string(), "claude-code".to_string());
        assert_eq!(got[&key], all_logs(sent), "{session}");
    }
    forwarder.stop().await;
    proxy.close().await;
    assert_accounting(proxy.metrics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_v1_and_v2_interleaved_on_one_connection_keep_their_order() {
    let coderd = FakeCoderd::start().await;
    let proxy = TestProxy::start(IoMode::Auto, |_| {});
    let forwarder = proxy.forward(grpc_reporter(&coderd.addr()));
    let sent: Vec<_> = (0..20)
        .map(|i| request(SESSION, "copilot", i * 2, 2))
        .collect();
    let mut client = proxy.connect();
    for (i, r) in sent.iter().enumerate() {
        client.send_request(if i % 2 == 0 { Tag::V1 } else { Tag::V2 }, r);
    }
    assert!(coderd.wait_for_logs(40, PATIENCE).await);
    proxy.wait_forwarded(40).await;
    assert_eq!(all_logs(&decoded(&coderd)), all_logs(&sent));
    forwarder.stop().await;
    proxy.close().await;
    assert_accounting(proxy.metrics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarder_continues_after_a_failed_call() {
    let coderd = FakeCoderd::start().await;
    coderd.set_behaviour(Behaviour::fail_next(1, Code::Unavailable));
    let proxy = TestProxy::start(IoMode::Auto, |c| c.retry_max_elapsed = Duration::ZERO);
    let forwarder = proxy.forward(grpc_reporter(&coderd.addr()));
    let first = request(SESSION, "codex", 0, 3);
    let second = request(SESSION, "codex", 3, 5);

    let mut client = proxy.connect();
    client.send_request(Tag::V2, &first);
    let metrics = proxy.metrics().clone();
    eventually("the first batch dropped as forward_failed", || {
        metrics.batches_dropped_for(BatchDropReason::ForwardFailed) == 1
    })
    .await;
    assert_eq!(metrics.logs_dropped_for(LogDropReason::ForwardFailed), 3);
    assert_eq!(metrics.batches_forwarded.get(), 0);

    client.send_request(Tag::V2, &second);
    assert!(coderd.wait_for_logs(5, PATIENCE).await);
    proxy.wait_forwarded(5).await;
    assert_eq!(decoded(&coderd), vec![second]);
    assert_eq!(coderd.calls(), 2);
    assert_eq!(metrics.batches_forwarded.get(), 1);
    assert_eq!(metrics.logs_forwarded.get(), 5);
    assert_eq!(
        metrics.forward_requests_for(ForwardResult::RetryableError),
        1
    );
    assert_eq!(metrics.forward_requests_for(ForwardResult::Ok), 1);
    assert_eq!(
        metrics.forward_requests_for(ForwardResult::PermanentError),
        0
    );

    forwarder.stop().await;
    proxy.close().await;
    assert_accounting(proxy.metrics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_drops_the_batch_at_once_despite_the_retry_budget() {
    let coderd = FakeCoderd::start().await;
    coderd.set_behaviour(Behaviour::fail_next(1, Code::InvalidArgument));
    let proxy = TestProxy::start(IoMode::Auto, |_| {});
    let forwarder = proxy.forward(grpc_reporter(&coderd.addr()));
    let mut client = proxy.connect();
    client.send_request(Tag::V2, &request(SESSION, "codex", 0, 2));
    let metrics = proxy.metrics().clone();
    eventually("the batch dropped as forward_failed", || {
        metrics.logs_dropped_for(LogDropReason::ForwardFailed) == 2
    })
    .await;
    let next = request(SESSION, "codex", 2, 1);
    client.send_request(Tag::V2, &next);
    assert!(coderd.wait_for_logs(1, PATIENCE).await);
    proxy.wait_forwarded(1).await;
    assert_eq!(decoded(&coderd), vec![next]);
    assert_eq!(coderd.calls(), 2, "not retried");
    assert_eq!(
        metrics.forward_requests_for(ForwardResult::PermanentError),
        1
    );
    forwarder.stop().await;
    proxy.close().await;
    assert_accounting(proxy.metrics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_until_delivered_with_no_drops() {
    let coderd = FakeCoderd::start().await;
    coderd.set_behaviour(Behaviour::fail_next(3, Code::Unavailable));
    let proxy = TestProxy::start(IoMode::Auto, |_| {});
    let forwarder = proxy.forward(grpc_reporter(&coderd.addr()));
    let sent = request(SESSION, "claude-code", 0, 7);
    proxy.connect().send_request(Tag::V1, &sent);
    assert!(coderd.wait_for_logs(7, PATIENCE).await);
    proxy.wait_forwarded(7).await;
    assert_eq!(decoded(&coderd), vec![sent]);
    assert_eq!(coderd.calls(), 4);

    let metrics = proxy.metrics();
    assert_eq!(
        metrics.forward_requests_for(ForwardResult::RetryableError),
        3
    );
    assert_eq!(metrics.forward_requests_for(ForwardResult::Ok), 1);
    assert_eq!(metrics.forward_latency_seconds.get_sample_count(), 4);
    forwarder.stop().await;
    close_expecting(&proxy, (7, 0, 0)).await;
}

/// Writes `sent[5..]` while no forwarder runs (they wait in the ring), then runs a
/// forwarder to `up`: every log of `sent` arrives there once and in order, and nothing
/// is dropped. Closes the proxy.
async fn a_new_forwarder_delivers_everything(
    proxy: &TestProxy,
    client: &mut support::proxy::Client,
    sent: &[ReportBoundaryLogsRequest],
    up: &FakeCoderd,
) {
    for r in &sent[5..] {
        client.send_request(Tag::V2, r);
    }
    proxy.wait_received(20).await;
    let forwarder = proxy.forward(grpc_reporter(&up.addr()));
    assert!(up.wait_for_logs(20, PATIENCE).await);
    proxy.wait_forwarded(20).await;
    assert_eq!(
        all_logs(&decoded(up)),
        all_logs(sent),
        "none lost, order kept"
    );
    forwarder.stop().await;
    close_expecting(proxy, (20, 0, 0)).await;
}

/// Closes the proxy and checks its logs forwarded, dropped as `forward_failed` and as
/// `shutdown`, and the accounting invariant.
async fn close_expecting(proxy: &TestProxy, forwarded_failed_shutdown: (u64, u64, u64)) {
    proxy.close().await;
    let a = proxy.metrics().accounting();
    assert_eq!(
        (a.forwarded, a.dropped_forward_failed, a.dropped_shutdown),
        forwarded_failed_shutdown
    );
    assert_accounting(proxy.metrics(), 0);
}

/// A coderd that answers every call UNAVAILABLE, one that takes every call, a proxy,
/// and ten requests of two logs each to send through it.
async fn down_and_up() -> (
    FakeCoderd,
    FakeCoderd,
    TestProxy,
    Vec<ReportBoundaryLogsRequest>,
) {
    let down = FakeCoderd::start().await;
    down.set_behaviour(Behaviour::fail_all(Code::Unavailable));
    let up = FakeCoderd::start().await;
    let proxy = TestProxy::start(IoMode::Auto, |_| {});
    let sent = (0..10)
        .map(|i| request(SESSION, "codex", i * 2, 2))
        .collect();
    (down, up, proxy, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_forwarder_returns_and_a_new_reporter_delivers_what_was_buffered() {
    let (down, up, proxy, sent) = down_and_up().await;

    let forwarder = proxy.forward(grpc_reporter(&down.addr()));
    let mut client = proxy.connect();
    for r in &sent[..5] {
        client.send_request(Tag::V2, r);
    }
    assert!(
        down.wait_for_calls(2, PATIENCE).await,
        "the first reporter is retrying"
    );
    forwarder.stop().await;

    // While no forwarder runs, frames wait in the ring.
    a_new_forwarder_delivers_everything(&proxy, &mut client, &sent, &up).await;
    assert!(down.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_forwarder_the_ring_fills_and_buffer_full_is_counted() {
    let coderd = FakeCoderd::start().await;
    let proxy = TestProxy::start(IoMode::Auto, |c| c.ring_capacity = 4);
    let sent: Vec<_> = (0..10)
        .map(|i| request(SESSION, "codex", i * 3, 3))
        .collect();
    let mut client = proxy.connect();
    for r in &sent {
        client.send_request(Tag::V2, r);
    }
    proxy.wait_received(30).await;
    let metrics = proxy.metrics();
    assert_eq!(proxy.server.ring_len(), 4);
    assert_eq!(
        metrics.ring_occupancy.get(),
        4,
        "the gauge shows the full ring"
    );
    assert_eq!(metrics.ring_capacity.get(), 4);
    assert_eq!(metrics.batches_dropped_for(BatchDropReason::BufferFull), 6);
    assert_eq!(metrics.logs_dropped_for(LogDropReason::BufferFull), 18);
    assert_accounting(metrics, 12);

    // The ring kept the oldest frames; a forwarder delivers exactly those.
    let forwarder = proxy.forward(grpc_reporter(&coderd.addr()));
    assert!(coderd.wait_for_logs(12, PATIENCE).await);
    proxy.wait_forwarded(12).await;
    assert_eq!(all_logs(&decoded(&coderd)), all_logs(&sent[..4]));
    forwarder.stop().await;
    proxy.close().await;
    assert_accounting(proxy.metrics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_counts_what_is_still_buffered_as_shutdown_drops() {
    let proxy = TestProxy::start(IoMode::Auto, |_| {});
    let mut client = proxy.connect();
    for i in 0..3 {
        client.send_request(Tag::V2, &request(SESSION, "codex", i * 4, 4));
    }
    proxy.wait_received(12).await;
    proxy.close().await;
    let metrics = proxy.metrics();
    assert_eq!(metrics.batches_dropped_for(BatchDropReason::Shutdown), 3);
    assert_eq!(metrics.logs_dropped_for(LogDropReason::Shutdown), 12);
    assert_eq!(metrics.ring_occupancy.get(), 0);
    assert_accounting(metrics, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_server_dropped_without_close_closes_and_counts_what_it_held() {
    // As when `run_forwarder(..).await?` returns an error and `?` drops the server.
    let proxy = TestProxy::start(IoMode::Auto, |_| {});
    let mut client = proxy.connect();
    for i in 0..3 {
        client.send_request(Tag::V2, &request(SESSION, "codex", i * 4, 4));
    }
    proxy.wait_received(12).await;
    let metrics = std::sync::Arc::clone(proxy.metrics());
    let socket = proxy.server.socket_path().to_owned();
    let (server, _dir) = proxy.into_parts();
    // In async code, as `?` would drop it.
    drop(server);
    assert_eq!(metrics.logs_dropped_for(LogDropReason::Shutdown), 12);
    assert_eq!(metrics.ring_occupancy.get(), 0);
    assert_accounting(&metrics, 0);
    assert!(!socket.exists(), "the socket file is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_frame_counts_boundary_drops_and_is_never_forwarded() {
    let coderd = FakeCoderd::start().await;
    let proxy = TestProxy::start(IoMode::Auto, |_| {});
    let forwarder = proxy.forward(grpc_reporter(&coderd.addr()));
    let after = request(SESSION, "codex", 0, 1);
    proxy
        .connect()
        .send(&vector("v2_status.bin"))
        .send_request(Tag::V2, &after);
    assert!(coderd.wait_for_logs(1, PATIENCE).await);
    proxy.wait_forwarded(1).await;
    assert_eq!(
        decoded(&coderd),
        vec![after],
        "the status frame is not forwarded"
    );
    let metrics = proxy.metrics();
    assert_eq!(
        metrics.logs_dropped_for(LogDropReason::BoundaryChannelFull),
        5
    );
    assert_eq!(
        metrics.logs_dropped_for(LogDropReason::BoundaryBatchFull),
        3
    );
    forwarder.stop().await;
    proxy.close().await;
    assert_accounting(proxy.metrics(), 0);
}

/// Frames waiting in the ring when the forwarder starts are drained at once, so
/// coalescing is deterministic: one request per (session, process) run of a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_frames_coalesce_per_session_and_process_keeping_order() {
    let coderd = FakeCoderd::start().await;
    let proxy = TestProxy::start(IoMode::Auto, |_| {});
    // conn 1: a run of (a, claude-code) then a run of (a, codex): same session,
    // different process, never merged. conn 2 and 3: one session each.
    let plan: [&[(&str, &str, i32)]; 3] = [
        &[
            ("session-a", "claude-code", 0),
            ("session-a", "codex", 1000),
        ],
        &[("session-b", "claude-code", 2000)],
        &[("session-c", "copilot", 3000)],
    ];
    let mut expected = std::collections::BTreeMap::new();
    let mut frames = 0u64;
    for runs in plan {
        let mut client = proxy.connect();
        for &(session, process, base) in runs {
            let sent: Vec<_> = (0..30)
                .map(|i| request(session, process, base + i * 3, 3))
                .collect();
            for r in &sent {
                client.send_request(Tag::V2, r);
            }
            frames += sent.len() as u64;
            expected.insert((session.to_string(), process.to_string()), all_logs(&sent));
        }
    }
    proxy.wait_received(frames * 3).await;
    assert_eq!(proxy.server.ring_len() as u64, frames);

    let forwarder = proxy.forward(grpc_reporter(&coderd.addr()));
    assert!(coderd.wait_for_logs(frames as usize * 3, PATIENCE).await);
    proxy.wait_forwarded(frames * 3).await;
    let got = decoded(&coderd);
    assert_eq!(
        logs_by_session(&got),
        expected,
        "each (session, process) in order, unmixed"
    );
    assert_eq!(
        got.len(),
        4,
        "one request per (session, process) run: {} calls",
        got.len()
    );
    assert_eq!(coderd.calls(), 4);
    assert_eq!(proxy.metrics().batches_forwarded.get(), frames);
    assert_eq!(proxy.metrics().forward_requests_for(ForwardResult::Ok), 4);

    forwarder.stop().await;
    proxy.close().await;
    assert_accounting(proxy.metrics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_requests_respect_batch_max_logs() {
    let coderd = FakeCoderd::start().await;
    let proxy = TestProxy::start(IoMode::Auto, |c| c.batch_max_logs = 50);
    let sent: Vec<_> = (0..40)
        .map(|i| request(SESSION, "codex", i * 3, 3))
        .collect();
    let mut client = proxy.connect();
    for r in &sent {
        client.send_request(Tag::V2, r);
    }
    proxy.wait_received(120).await;
    let forwarder = proxy.forward(grpc_reporter(&coderd.addr()));
    assert!(coderd.wait_for_logs(120, PATIENCE).await);
    proxy.wait_forwarded(120).await;
    let got = decoded(&coderd);
    assert_eq!(all_logs(&got), all_logs(&sent));
    assert!(
        got.iter().all(|r| r.logs.len() <= 50),
        "{:?}",
        got.iter().map(|r| r.logs.len()).collect::<Vec<_>>()
    );
    assert!(
        got.len() >= 3 && got.len() < sent.len(),
        "{} requests",
        got.len()
    );
    forwarder.stop().await;
    proxy.close().await;
    assert_accounting(proxy.metrics(), 0);
}

on_io_modes!(one_log_arrives_with_every_field_intact);

/// Closing an io_uring makes the kernel queue teardown work, as a signal, to every
/// thread that used it; a thread sleeping in a syscall with a timeout then wakes with
/// EINTR. Starting the server (which probes io_uring) must not do that to the caller.
#[test]
fn starting_the_server_does_not_interrupt_the_callers_next_syscall() {
    use std::io::Read as _;
    let proxy = TestProxy::start(IoMode::Auto, |_| {});
    let (mut a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    a.set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let err = a.read(&mut [0u8; 1]).expect_err("nothing to read");
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "{err}");
    proxy.server.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_written_while_coderd_restarts_are_delivered_after_it_is_back() {
    let mut coderd = FakeCoderd::start().await;
    let proxy = TestProxy::start(IoMode::Auto, |_| {});
    let forwarder = proxy.forward(grpc_reporter(&coderd.addr()));
    let sent: Vec<_> = (0..6)
        .map(|i| request(SESSION, "codex", i * 2, 2))
        .collect();
    let mut client = proxy.connect();
    client.send_request(Tag::V2, &sent[0]);
    assert!(coderd.wait_for_logs(2, PATIENCE).await);
    proxy.wait_forwarded(2).await;

    coderd.stop().await;
    for r in &sent[1..] {
        client.send_request(Tag::V2, r);
    }
    let metrics = proxy.metrics().clone();
    eventually("a failed call while coderd is down", || {
        metrics.forward_requests_for(ForwardResult::RetryableError) >= 1
    })
    .await;
    coderd.restart().await;
    assert!(coderd.wait_for_logs(12, PATIENCE).await);
    proxy.wait_forwarded(12).await;
    assert_eq!(all_logs(&decoded(&coderd)), all_logs(&sent));

    forwarder.stop().await;
    proxy.close().await;
    let a = proxy.metrics().accounting();
    assert_eq!((a.dropped_forward_failed, a.dropped_shutdown), (0, 0));
    assert_accounting(proxy.metrics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_with_coderd_down_counts_the_undelivered_logs_as_shutdown_drops() {
    let coderd = FakeCoderd::start().await;
    coderd.set_behaviour(Behaviour::fail_all(Code::Unavailable));
    let proxy = TestProxy::start(IoMode::Auto, |_| {});
    let forwarder = proxy.forward(grpc_reporter(&coderd.addr()));
    let mut client = proxy.connect();
    for i in 0..8 {
        client.send_request(Tag::V2, &request(SESSION, "codex", i * 3, 3));
    }
    proxy.wait_received(24).await;
    assert!(coderd.wait_for_calls(1, PATIENCE).await);
    // close stops the running forwarder itself; run_forwarder then returns Ok.
    proxy.close().await;
    forwarder.join().await;
    let metrics = proxy.metrics();
    assert_eq!(metrics.logs_dropped_for(LogDropReason::Shutdown), 24);
    assert_eq!(metrics.batches_dropped_for(BatchDropReason::Shutdown), 8);
    assert_accounting(metrics, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_sequence_numbers_are_counted_as_gaps_and_the_logs_still_forwarded() {
    let coderd = FakeCoderd::start().await;
    let proxy = TestProxy::start(IoMode::Auto, |_| {});
    let forwarder = proxy.forward(grpc_reporter(&coderd.addr()));
    let sent = [
        request("gappy", "codex", 0, 5),
        request("gappy", "codex", 10, 5),
    ];
    let mut client = proxy.connect();
    for r in &sent {
        client.send_request(Tag::V2, r);
    }
    assert!(coderd.wait_for_logs(10, PATIENCE).await);
    proxy.wait_forwarded(10).await;
    assert_eq!(all_logs(&decoded(&coderd)), all_logs(&sent));
    assert_eq!(proxy.metrics().sequence_gaps.get(), 5, "5..=9 are missing");
    forwarder.stop().await;
    proxy.close().await;
    assert_accounting(proxy.metrics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_stop_intake_the_forwarder_delivers_everything_and_returns_by_itself() {
    let coderd = FakeCoderd::start().await;
    coderd.set_behaviour(Behaviour::normal().with_delay(Duration::from_millis(20)));
    let proxy = TestProxy::start(IoMode::Auto, |c| c.batch_max_logs = 4);
    let sent: Vec<_> = (0..20)
        .map(|i| request(SESSION, "codex", i * 2, 2))
        .collect();
    let mut client = proxy.connect();
    for r in &sent {
        client.send_request(Tag::V2, r);
    }
    proxy.wait_received(40).await;
    let forwarder = proxy.forward(grpc_reporter(&coderd.addr()));
    {
        let server = proxy.server.clone();
        let deadline = std::time::Instant::now() + PATIENCE;
        tokio::task::spawn_blocking(move || server.stop_intake(deadline))
            .await
            .unwrap();
    }
    assert!(
        client.closed_by_proxy(PATIENCE),
        "stop_intake closes connections"
    );
    forwarder.join().await;
    assert_eq!(all_logs(&decoded(&coderd)), all_logs(&sent));
    assert_eq!(proxy.metrics().logs_forwarded.get(), 40);
    proxy.close().await;
    assert!(!proxy.server.socket_path().exists());
    assert_accounting(proxy.metrics(), 0);
}

/// Records the name of the thread each call ran on.
#[derive(Default)]
struct ThreadRecorder {
    may_block: bool,
    threads: std::sync::Mutex<Vec<String>>,
}

impl boundary_log_proxy::reporter::Reporter for ThreadRecorder {
    async fn report_boundary_logs(
        &self,
        _: ReportBoundaryLogsRequest,
    ) -> Result<boundary_log_proxy::proto::agent::ReportBoundaryLogsResponse, tonic::Status> {
        let name = std::thread::current().name().unwrap_or("").to_owned();
        self.threads.lock().unwrap().push(name);
        Ok(Default::default())
    }

    fn calls_may_block(&self) -> bool {
        self.may_block
    }
}

async fn calls_run_on(may_block: bool) -> Vec<String> {
    let proxy = TestProxy::start(IoMode::Auto, |_| {});
    let reporter = std::sync::Arc::new(ThreadRecorder {
        may_block,
        ..Default::default()
    });
    let forwarder = proxy.forward(reporter.clone());
    proxy.connect().send(&vector("v1_single.bin"));
    proxy.wait_forwarded(1).await;
    forwarder.stop().await;
    proxy.close().await;
    assert_accounting(proxy.metrics(), 0);
    let threads = reporter.threads.lock().unwrap().clone();
    threads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_may_block_run_on_the_calls_thread_and_the_others_on_the_forwarders_task() {
    assert_eq!(calls_run_on(true).await, ["blp-calls"]);
    let direct = calls_run_on(false).await;
    assert_eq!(direct.len(), 1);
    assert_ne!(
        direct[0], "blp-calls",
        "no hand-off for a reporter that never blocks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_forwarders_future_hands_what_it_held_back_and_the_next_forwarder_delivers_it()
{
    let (down, up, proxy, sent) = down_and_up().await;
    let mut client = proxy.connect();
    for r in &sent[..5] {
        client.send_request(Tag::V2, r);
    }
    // Ordinary tokio code: a timeout around the forwarder drops its future while the
    // reporter retries.
    let forwarder = proxy.server.run_forwarder(
        tokio_util::sync::CancellationToken::new(),
        grpc_reporter(&down.addr()),
    );
    let gave_up = tokio::time::timeout(Duration::from_millis(500), forwarder).await;
    assert!(gave_up.is_err(), "the forwarder was still retrying");
    assert!(!down.requests().is_empty() || down.wait_for_calls(1, PATIENCE).await);

    // Frames written after it was dropped wait in the ring, not in a drain thread
    // nobody reads; the next forwarder gets the state back (it waits for it).
    a_new_forwarder_delivers_everything(&proxy, &mut client, &sent, &up).await;
}

/// Panics in its first call, then delivers (counting the calls).
#[derive(Default)]
struct PanicsOnce {
    may_block: bool,
    calls: std::sync::atomic::AtomicU32,
}

impl boundary_log_proxy::reporter::Reporter for PanicsOnce {
    async fn report_boundary_logs(
        &self,
        _: ReportBoundaryLogsRequest,
    ) -> Result<boundary_log_proxy::proto::agent::ReportBoundaryLogsResponse, tonic::Status> {
        let call = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(call > 0, "the reporter's first call panics");
        Ok(Default::default())
    }

    fn calls_may_block(&self) -> bool {
        self.may_block
    }
}

async fn a_call_that_panics(may_block: bool) {
    let proxy = TestProxy::start(IoMode::Auto, |c| c.batch_linger = Duration::ZERO);
    let reporter = std::sync::Arc::new(PanicsOnce {
        may_block,
        ..Default::default()
    });
    let forwarder = proxy.forward(reporter.clone());
    let mut client = proxy.connect();
    client.send_request(Tag::V2, &request(SESSION, "codex", 0, 3));
    let metrics = proxy.metrics().clone();
    eventually("the panicking call's logs dropped", || {
        metrics.logs_dropped_for(LogDropReason::ForwardFailed) == 3
    })
    .await;
    // The forwarder goes on with the next request.
    client.send_request(Tag::V2, &request(SESSION, "codex", 3, 4));
    proxy.wait_forwarded(4).await;
    forwarder.stop().await;
    proxy.close().await;
    let a = proxy.metrics().accounting();
    assert_eq!(
        (a.forwarded, a.dropped_forward_failed, a.dropped_shutdown),
        (4, 3, 0),
        "may_block {may_block}"
    );
    assert_accounting(proxy.metrics(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_panics_fails_as_internal_and_the_forwarder_goes_on_whichever_thread_it_ran_on()
{
    a_call_that_panics(false).await;
    a_call_that_panics(true).await;
}

/// Never answers, counting its calls.
#[derive(Default)]
struct NeverAnswers {
    may_block: bool,
    calls: std::sync::atomic::AtomicU32,
}

impl boundary_log_proxy::reporter::Reporter for NeverAnswers {
    async fn report_boundary_logs(
        &self,
        _: ReportBoundaryLogsRequest,
    ) -> Result<boundary_log_proxy::proto::agent::ReportBoundaryLogsResponse, tonic::Status> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::future::pending().await
    }

    fn calls_may_block(&self) -> bool {
        self.may_block
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_never_ends_fails_after_the_call_timeout_is_retried_and_its_logs_are_counted() {
    a_call_that_never_ends(false).await;
    a_call_that_never_ends(true).await;
}

async fn a_call_that_never_ends(may_block: bool) {
    let proxy = TestProxy::start(IoMode::Auto, |c| {
        c.call_timeout = Duration::from_millis(100);
        c.retry_max_elapsed = Duration::from_millis(1500);
    });
    let reporter = std::sync::Arc::new(NeverAnswers {
        may_block,
        ..Default::default()
    });
    let forwarder = proxy.forward(reporter.clone());
    proxy
        .connect()
        .send_request(Tag::V2, &request(SESSION, "codex", 0, 3));
    let metrics = proxy.metrics().clone();
    eventually("the unanswered logs dropped after retries", || {
        metrics.logs_dropped_for(LogDropReason::ForwardFailed) == 3
    })
    .await;
    let calls = reporter.calls.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        calls >= 2,
        "each call given up on is retried (may_block {may_block}): {calls}"
    );
    assert!(
        metrics.forward_requests_for(ForwardResult::RetryableError) >= 1,
        "a call given up on is a retryable error"
    );
    forwarder.stop().await;
    proxy.close().await;
    assert_accounting(proxy.metrics(), 0);
}

#[test]
fn a_server_is_not_built_with_a_setting_out_of_range_and_the_error_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = boundary_log_proxy::config::Config {
        socket: dir.path().join("s.sock"),
        shutdown_timeout: Duration::MAX,
        ..Default::default()
    };
    let error = boundary_log_proxy::Server::new(config, &prometheus::Registry::new())
        .err()
        .expect("refused");
    match error {
        ServerError::Config(error) => assert_eq!(error.setting(), "--shutdown-timeout"),
        other => panic!("{other:?}"),
    }
}

/// A stdout whose first write blocks for a while (a reader that pauses), then takes all.
struct PausingStdout {
    first: std::sync::Arc<std::sync::atomic::AtomicBool>,
    out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    pause: Duration,
}

impl std::io::Write for PausingStdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(self.pause);
        }
        self.out.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A call blocking its thread past the call deadline cannot be stopped: it is waited
/// for, not retried beside it (the retry would queue behind it and print the logs a
/// second time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_sink_paused_past_the_call_deadline_prints_each_log_once() {
    let proxy = TestProxy::start(IoMode::Auto, |c| {
        c.call_timeout = Duration::from_millis(100); // a deadline of 1.1 s
        c.batch_linger = Duration::ZERO;
    });
    let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reporter = boundary_log_proxy::reporter::stdout::StdoutReporter::with_writer(Box::new(
        PausingStdout {
            first: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            out: out.clone(),
            pause: Duration::from_millis(2000),
        },
    ));
    let forwarder = proxy.forward(reporter);
    proxy
        .connect()
        .send_request(Tag::V2, &request(SESSION, "codex", 0, 3));
    proxy.wait_forwarded(3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    forwarder.stop().await;
    proxy.close().await;
    let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
    assert_eq!(text.lines().count(), 3, "each log printed once:\n{text}");
    let a = proxy.metrics().accounting();
    assert_eq!((a.forwarded, a.dropped_forward_failed), (3, 0));
    assert_accounting(proxy.metrics(), 0);
}

/// `run_forwarder` polled once (its task spawned) and dropped before the task first
/// ran, then the runtime dropped with the task in it: the state still comes back, and
/// the next forwarder runs instead of waiting for it forever.
#[test]
fn a_forwarder_dropped_before_its_task_first_ran_hands_its_state_back() {
    let rt = current_thread_runtime();
    let proxy = rt.block_on(async { TestProxy::start(IoMode::Auto, |_| {}) });
    rt.block_on(async {
        proxy
            .connect()
            .send_request(Tag::V2, &request(SESSION, "codex", 0, 3));
        proxy.wait_received(3).await;
        tokio::select! {
            biased;
            _ = proxy.server.run_forwarder(tokio_util::sync::CancellationToken::new(), CountsUnavailable::default()) => {},
            () = std::future::ready(()) => {},
        }
    });
    drop(rt);
    let rt = current_thread_runtime();
    let again = rt.block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stop.cancel();
        });
        tokio::time::timeout(
            Duration::from_secs(5),
            proxy
                .server
                .run_forwarder(cancel, CountsUnavailable::default()),
        )
        .await
    });
    assert!(
        matches!(again, Ok(Ok(()))),
        "the next forwarder ran and returned when cancelled: {again:?}"
    );
    rt.block_on(proxy.close());
    assert_eq!(
        proxy.metrics().logs_dropped_for(LogDropReason::Shutdown),
        3,
        "what the ring held is counted at close"
    );
    assert_accounting(proxy.metrics(), 0);
}

/// A runtime of the test's own thread, which only runs while the test blocks on it.
fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Counts its calls and answers each UNAVAILABLE, never blocking.
#[derive(Default)]
struct CountsUnavailable {
    calls: std::sync::atomic::AtomicU32,
}

impl boundary_log_proxy::reporter::Reporter for CountsUnavailable {
    async fn report_boundary_logs(
        &self,
        _: ReportBoundaryLogsRequest,
    ) -> Result<boundary_log_proxy::proto::agent::ReportBoundaryLogsResponse, tonic::Status> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(tonic::Status::unavailable("down"))
    }

    fn calls_may_block(&self) -> bool {
        false
    }
}

/// A forwarder whose task is cancelled while it runs (its runtime dropped) takes the
/// delivery loop with it: the request it was retrying goes uncounted (documented), no
/// forwarder can run again, and every log received from then on is counted as dropped
/// `forward_failed` rather than drained into nowhere.
#[test]
fn logs_received_after_a_forwarder_was_dropped_while_it_ran_are_counted() {
    let rt = current_thread_runtime();
    let proxy = rt.block_on(async { TestProxy::start(IoMode::Auto, |_| {}) });
    let reporter = std::sync::Arc::new(CountsUnavailable::default());
    rt.block_on(async {
        proxy
            .connect()
            .send_request(Tag::V2, &request(SESSION, "codex", 0, 2));
        let forwarder = proxy
            .server
            .run_forwarder(tokio_util::sync::CancellationToken::new(), reporter.clone());
        // Runs until it is retrying that request; the runtime, dropped next, cancels
        // its task there.
        tokio::select! {
            ended = forwarder => panic!("the forwarder ended: {ended:?}"),
            () = eventually("the forwarder calling", || {
                reporter.calls.load(std::sync::atomic::Ordering::SeqCst) >= 1
            }) => {}
        }
    });
    drop(rt);
    let rt = current_thread_runtime();
    rt.block_on(async {
        let mut client = proxy.connect();
        for i in 1..6 {
            client.send_request(Tag::V2, &request(SESSION, "codex", i * 2, 2));
        }
        proxy.wait_received(12).await;
        let metrics = proxy.metrics().clone();
        eventually("the later logs counted as dropped", || {
            metrics.logs_dropped_for(LogDropReason::ForwardFailed) == 10
        })
        .await;
        let again = proxy
            .server
            .run_forwarder(
                tokio_util::sync::CancellationToken::new(),
                CountsUnavailable::default(),
            )
            .await;
        assert!(
            matches!(
                again,
                Err(ServerError::Forwarder(
                    boundary_log_proxy::forwarder::ForwarderError::Lost
                ))
            ),
            "{again:?}"
        );
        proxy.close().await;
    });
    // The two logs of the request the lost forwarder held are the only ones unsettled.
    assert_accounting(proxy.metrics(), 2);
}

/// Blocks its thread in its first call (a write that pauses), records the request as
/// written, then awaits before it returns.
#[derive(Default)]
struct BlocksThenAwaits {
    written: std::sync::atomic::AtomicU32,
}

impl boundary_log_proxy::reporter::Reporter for BlocksThenAwaits {
    async fn report_boundary_logs(
        &self,
        _: ReportBoundaryLogsRequest,
    ) -> Result<boundary_log_proxy::proto::agent::ReportBoundaryLogsResponse, tonic::Status> {
        let first = self
            .written
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            == 0;
        if first {
            std::thread::sleep(Duration::from_millis(2000));
        }
        tokio::task::yield_now().await;
        Ok(Default::default())
    }
}

/// Past its deadline a call that is blocking its thread is not given up on at its next
/// await (it has written by then): it is waited for, and not sent a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_blocks_past_the_deadline_and_then_awaits_is_sent_once() {
    let proxy = TestProxy::start(IoMode::Auto, |c| {
        c.call_timeout = Duration::from_millis(100); // a deadline of 1.1 s
        c.batch_linger = Duration::ZERO;
    });
    let reporter = std::sync::Arc::new(BlocksThenAwaits::default());
    let forwarder = proxy.forward(reporter.clone());
    proxy
        .connect()
        .send_request(Tag::V2, &request(SESSION, "codex", 0, 3));
    proxy.wait_forwarded(3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    forwarder.stop().await;
    let metrics = proxy.metrics().clone();
    close_expecting(&proxy, (3, 0, 0)).await;
    assert_eq!(
        reporter.written.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "written once"
    );
    assert_eq!(
        metrics.forward_requests_for(ForwardResult::RetryableError),
        0
    );
}
