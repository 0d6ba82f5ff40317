//! Request limits through the whole pipeline, over real sockets: every request the
//! proxy builds is within `--batch-max-bytes` and `--batch-max-logs` counted on the
//! encoded request, a frame over a limit is cut at log boundaries, and a request the
//! destination refuses for its size is split until it passes, with exact accounting.

mod support;

use std::time::Duration;

use boundary_log_proxy::codec::{Tag, MAX_PAYLOAD_LEN};
use boundary_log_proxy::config::{Config, IoMode};
use boundary_log_proxy::metrics::{ForwardResult, LogDropReason};
use boundary_log_proxy::proto::agent::{BoundaryLog, ReportBoundaryLogsRequest};
use boundary_log_proxy::reporter::grpc::{GrpcReporter, GrpcReporterConfig};
use prost::Message as _;
use support::coderd::{Behaviour, FakeCoderd, Received};
use support::proxy::{
    all_logs, assert_accounting, grpc_reporter, request, Forwarder, TestProxy, PATIENCE,
};

const SESSION: &str = "0b6c4e3a-7f2d-4c1e-9a8b-5d6e7f8a9b0c";

/// A proxy with `tweak`ed limits, forwarding to `coderd`; frames sent within the
/// linger coalesce into one request where the limits allow.
async fn pipeline(coderd: &FakeCoderd, tweak: impl FnOnce(&mut Config)) -> (TestProxy, Forwarder) {
    let proxy = TestProxy::start(IoMode::Auto, |config| {
        config.batch_linger = Duration::from_millis(500);
        tweak(config);
    });
    let forwarder = proxy.forward(grpc_reporter(&coderd.addr()));
    (proxy, forwarder)
}

async fn finish(proxy: &TestProxy, forwarder: Forwarder) {
    forwarder.stop().await;
    proxy.close().await;
    assert_accounting(proxy.metrics(), 0);
}

fn seqs(received: &[Received]) -> Vec<i32> {
    let requests: Vec<&ReportBoundaryLogsRequest> = received.iter().map(|r| &r.request).collect();
    all_logs(requests)
        .iter()
        .map(|l| l.sequence_number)
        .collect()
}

#[tokio::test]
async fn a_request_too_large_for_the_receiver_is_split_and_every_log_delivered() {
    // A receiver taking at most 64 KiB a message; 40 frames of about 8 KiB, which
    // coalesce into one request of over 300 KB.
    let coderd = FakeCoderd::start().await;
    coderd.set_behaviour(Behaviour::normal().with_max_message_bytes(64 << 10));
    let (proxy, forwarder) = pipeline(&coderd, |_| {}).await;
    let frames: Vec<ReportBoundaryLogsRequest> = (0..40)
        .map(|i| request(SESSION, "codex", i * 60, 60))
        .collect();
    let total: usize = frames.iter().map(|f| f.encoded_len()).sum();
    assert!(total > 300_000, "{total} bytes");
    let mut client = proxy.connect();
    for frame in &frames {
        client.send_request(Tag::V2, frame);
    }
    assert!(coderd.wait_for_logs(2400, PATIENCE).await);
    proxy.wait_forwarded(2400).await;

    let received = coderd.requests();
    assert_eq!(
        seqs(&received),
        (0..2400).collect::<Vec<_>>(),
        "all, in order"
    );
    assert!(received.iter().all(|r| r.raw.len() <= 64 << 10));
    let m = proxy.metrics();
    assert!(m.requests_split.get() >= 1, "the 300 KB request was split");
    assert_eq!(m.logs_dropped_for(LogDropReason::ForwardFailed), 0);
    assert_eq!(m.batches_forwarded.get(), 40, "frames, each once");
    finish(&proxy, forwarder).await;
}

#[tokio::test]
async fn a_receiver_refusing_more_logs_than_its_maximum_gets_them_all_in_smaller_requests() {
    // coderd's answer to too many logs: "batch size N exceeds maximum M".
    let coderd = FakeCoderd::start().await;
    coderd.set_behaviour(Behaviour::normal().with_max_logs(40));
    let (proxy, forwarder) = pipeline(&coderd, |_| {}).await;
    let mut client = proxy.connect();
    for i in 0..6 {
        client.send_request(Tag::V1, &request(SESSION, "codex", i * 50, 50));
    }
    assert!(coderd.wait_for_logs(300, PATIENCE).await);
    proxy.wait_forwarded(300).await;

    let received = coderd.requests();
    assert_eq!(seqs(&received), (0..300).collect::<Vec<_>>());
    assert!(received.iter().all(|r| r.request.logs.len() <= 40));
    assert_eq!(
        coderd.refused_for_logs(),
        1,
        "the stated maximum is kept: one refusal"
    );
    assert_eq!(proxy.metrics().batches_forwarded.get(), 6);
    finish(&proxy, forwarder).await;
}

#[tokio::test]
async fn a_reporter_with_a_smaller_message_limit_gets_every_log_in_requests_within_it() {
    // The transport's own limit (here 16 KiB, below --batch-max-bytes' 1 MiB): the
    // reporter refuses larger requests without sending them, and they are cut to it.
    let coderd = FakeCoderd::start().await;
    let proxy = TestProxy::start(IoMode::Auto, |c| {
        c.batch_linger = Duration::from_millis(500);
    });
    let reporter =
        GrpcReporter::new(GrpcReporterConfig::new(coderd.addr()).max_message_bytes(16 << 10))
            .unwrap();
    let forwarder = proxy.forward(reporter);
    let mut client = proxy.connect();
    for i in 0..10 {
        client.send_request(Tag::V2, &request(SESSION, "codex", i * 60, 60));
    }
    assert!(coderd.wait_for_logs(600, PATIENCE).await);
    proxy.wait_forwarded(600).await;

    let received = coderd.requests();
    assert_eq!(seqs(&received), (0..600).collect::<Vec<_>>());
    assert!(received.iter().all(|r| r.raw.len() <= 16 << 10));
    assert!(proxy.metrics().requests_split.get() >= 1);
    assert_eq!(
        proxy
            .metrics()
            .forward_requests_for(ForwardResult::PermanentError),
        1,
        "refused once; the stated limit is kept"
    );
    finish(&proxy, forwarder).await;
}

/// A frame as large as it can be with a 12000-byte session id and a 4000-byte
/// process name: as many logs as fit (about 120, 16 KB of them).
fn hostile_frame(first_seq: i32) -> ReportBoundaryLogsRequest {
    let mut frame = request(&"s".repeat(12_000), &"p".repeat(4_000), first_seq, 200);
    while frame.encoded_len() > MAX_PAYLOAD_LEN {
        frame.logs.pop();
    }
    frame
}

/// 263 hostile frames, the first ones filling `max_bytes` with their logs alone to
/// within one log, so that counting only the logs' bytes (as the proxy once did)
/// builds a first request that is over 4 MiB once the session id and process name
/// are added.
fn hostile_frames(max_bytes: usize) -> Vec<ReportBoundaryLogsRequest> {
    let overhead = ReportBoundaryLogsRequest {
        logs: Vec::new(),
        ..hostile_frame(0)
    }
    .encoded_len();
    let logs_bytes = |f: &ReportBoundaryLogsRequest| f.encoded_len() - overhead;
    let (mut frames, mut seq, mut sum) = (Vec::new(), 0, 0);
    let mut first_request = None;
    while frames.len() < 263 {
        let mut frame = hostile_frame(seq);
        if first_request.is_none() && sum + logs_bytes(&frame) > max_bytes {
            while sum + logs_bytes(&frame) > max_bytes {
                frame.logs.pop();
            }
            first_request = Some(sum + logs_bytes(&frame) + overhead);
        }
        seq += frame.logs.len() as i32;
        sum += logs_bytes(&frame);
        frames.push(frame);
    }
    let first_request = first_request.expect("the frames fill more than one request");
    assert!(
        first_request > 4 << 20,
        "premise: logs alone within the limit make a request of {first_request} bytes"
    );
    frames
}

#[tokio::test]
async fn long_session_ids_never_make_a_request_over_batch_max_bytes() {
    let coderd = FakeCoderd::start().await;
    let max_bytes = 4_194_303;
    let (proxy, forwarder) = pipeline(&coderd, |c| {
        c.batch_max_bytes = max_bytes;
        c.batch_max_logs = 1_000_000;
    })
    .await;
    let frames = hostile_frames(max_bytes);
    let mut client = proxy.connect();
    for frame in &frames {
        client.send_request(Tag::V1, frame);
    }
    let sent: usize = frames.iter().map(|f| f.logs.len()).sum();
    let delivered = coderd.wait_for_logs(sent, PATIENCE).await;
    assert!(
        delivered,
        "{sent} sent, {} received by coderd; {:?}, {} splits",
        coderd.logs_received(),
        proxy.metrics().accounting(),
        proxy.metrics().requests_split.get()
    );
    proxy.wait_forwarded(sent as u64).await;

    let received = coderd.requests();
    for r in &received {
        assert!(
            r.raw.len() <= max_bytes,
            "a request of {} bytes",
            r.raw.len()
        );
    }
    assert_eq!(seqs(&received), (0..sent as i32).collect::<Vec<_>>());
    let m = proxy.metrics();
    assert_eq!(
        m.requests_split.get(),
        0,
        "built within the limit, not split after"
    );
    assert_eq!(m.logs_dropped_for(LogDropReason::ForwardFailed), 0);
    finish(&proxy, forwarder).await;
}

#[tokio::test]
async fn one_frame_of_5000_logs_goes_as_50_requests_of_batch_max_logs_in_order() {
    let coderd = FakeCoderd::start().await;
    let (proxy, forwarder) = pipeline(&coderd, |c| c.batch_max_logs = 100).await;
    let frame = ReportBoundaryLogsRequest {
        logs: (0..5000)
            .map(|seq| BoundaryLog {
                sequence_number: seq,
                ..BoundaryLog::default()
            })
            .collect(),
        session_id: SESSION.to_owned(),
        confined_process_name: "codex".to_owned(),
    };
    proxy.connect().send_request(Tag::V1, &frame);
    assert!(coderd.wait_for_logs(5000, PATIENCE).await);
    proxy.wait_forwarded(5000).await;

    let received = coderd.requests();
    assert_eq!(received.len(), 50);
    assert!(received.iter().all(|r| r.request.logs.len() == 100));
    assert_eq!(seqs(&received), (0..5000).collect::<Vec<_>>());
    let m = proxy.metrics();
    assert_eq!(m.batches_forwarded.get(), 1, "one frame, counted once");
    assert_eq!(m.logs_forwarded.get(), 5000);
    finish(&proxy, forwarder).await;
}
