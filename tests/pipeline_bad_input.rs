//! Bad input through the whole pipeline (docs/wire-format.md's table): what closes a
//! connection, what is skipped, and that good frames around it still reach coderd.
//! Each test runs under `--io auto` and `--io epoll`.

mod support;

use boundary_log_proxy::codec::Tag;
use boundary_log_proxy::config::IoMode;
use boundary_log_proxy::metrics::{FrameRejectReason, LogDropReason};
use boundary_log_proxy::proto::agent::ReportBoundaryLogsRequest;
use boundary_log_proxy::proto::envelope::{boundary_message::Msg, BoundaryMessage, BoundaryStatus};
use prost::Message as _;
use support::coderd::FakeCoderd;
use support::proxy::{
    all_logs, assert_accounting, eventually, grpc_reporter, request, vector, Client, Forwarder,
    TestProxy, PATIENCE,
};

const SESSION: &str = "7d1f5a7e-3c2b-4f7e-9a51-0c6e2d9b8a41";

/// A proxy forwarding to a fresh fake coderd.
async fn pipeline(io: IoMode) -> (FakeCoderd, TestProxy, Forwarder) {
    let coderd = FakeCoderd::start().await;
    let proxy = TestProxy::start(io, |_| {});
    let forwarder = proxy.forward(grpc_reporter(&coderd.addr()));
    (coderd, proxy, forwarder)
}

fn decoded(coderd: &FakeCoderd) -> Vec<ReportBoundaryLogsRequest> {
    coderd.requests().into_iter().map(|r| r.request).collect()
}

async fn finish(proxy: &TestProxy, forwarder: Forwarder) {
    forwarder.stop().await;
    proxy.close().await;
    assert_accounting(proxy.metrics(), 0);
}

async fn wait_rejected(proxy: &TestProxy, reason: FrameRejectReason, n: u64) {
    let metrics = proxy.metrics().clone();
    eventually(&format!("frames_rejected{{{reason}}} = {n}"), || {
        metrics.frames_rejected_for(reason) >= n
    })
    .await;
    assert_eq!(proxy.metrics().frames_rejected_for(reason), n);
}

/// Sends `good` on a second connection and waits for it: the rejected one did not
/// disturb others.
async fn another_connection_still_works(
    proxy: &TestProxy,
    coderd: &FakeCoderd,
    logs_before: u64,
) -> ReportBoundaryLogsRequest {
    let good = request(SESSION, "codex", 500, 2);
    proxy.connect().send_request(Tag::V2, &good);
    assert!(
        coderd
            .wait_for_logs(logs_before as usize + 2, PATIENCE)
            .await
    );
    proxy.wait_forwarded(logs_before + 2).await;
    good
}

async fn an_oversized_header_closes_the_connection(io: IoMode) {
    let (coderd, proxy, forwarder) = pipeline(io).await;
    let mut client = proxy.connect();
    client.send(&vector("v1_too_large_header.bin"));
    assert!(
        client.closed_by_proxy(PATIENCE),
        "the proxy closes the connection"
    );
    wait_rejected(&proxy, FrameRejectReason::TooLarge, 1).await;

    let good = another_connection_still_works(&proxy, &coderd, 0).await;
    assert_eq!(decoded(&coderd), vec![good]);
    assert_eq!(proxy.metrics().logs_received.get(), 2);
    finish(&proxy, forwarder).await;
}

async fn garbage_protobuf_is_skipped_and_the_next_frame_forwarded(io: IoMode) {
    let (coderd, proxy, forwarder) = pipeline(io).await;
    let after = request(SESSION, "claude-code", 0, 3);
    let mut client = proxy.connect();
    client
        .send(&vector("v1_garbage_protobuf.bin"))
        .send_request(Tag::V1, &after);
    assert!(coderd.wait_for_logs(3, PATIENCE).await);
    proxy.wait_forwarded(3).await;
    assert_eq!(decoded(&coderd), vec![after]);
    assert_eq!(
        proxy
            .metrics()
            .frames_rejected_for(FrameRejectReason::DecodeError),
        1
    );
    assert_eq!(
        proxy.metrics().logs_received.get(),
        3,
        "skipped frames are not received logs"
    );
    assert!(
        !client.closed_by_proxy(std::time::Duration::from_millis(50)),
        "the connection stays open"
    );
    finish(&proxy, forwarder).await;
}

async fn an_unknown_tag_closes_the_connection(io: IoMode) {
    let (coderd, proxy, forwarder) = pipeline(io).await;
    for (name, n) in [("unknown_tag.bin", 1), ("tag_zero.bin", 2)] {
        let mut client = proxy.connect();
        client.send(&vector(name));
        assert!(
            client.closed_by_proxy(PATIENCE),
            "{name} closes the connection"
        );
        wait_rejected(&proxy, FrameRejectReason::UnsupportedTag, n).await;
    }
    // A good frame before the bad header on the same connection is still forwarded.
    let before = request(SESSION, "codex", 0, 1);
    let mut client = proxy.connect();
    client
        .send_request(Tag::V2, &before)
        .send(&vector("unknown_tag.bin"));
    assert!(client.closed_by_proxy(PATIENCE));
    assert!(coderd.wait_for_logs(1, PATIENCE).await);
    proxy.wait_forwarded(1).await;
    wait_rejected(&proxy, FrameRejectReason::UnsupportedTag, 3).await;
    assert_eq!(decoded(&coderd), vec![before]);
    finish(&proxy, forwarder).await;
}

async fn empty_and_unknown_envelopes_forward_nothing_and_keep_the_connection(io: IoMode) {
    let (coderd, proxy, forwarder) = pipeline(io).await;
    let after = request(SESSION, "codex", 0, 2);
    let mut client = proxy.connect();
    client
        .send(&vector("v2_empty_envelope.bin"))
        .send(&vector("v2_unknown_variant.bin"))
        .send_request(Tag::V2, &after);
    assert!(coderd.wait_for_logs(2, PATIENCE).await);
    proxy.wait_forwarded(2).await;
    assert_eq!(decoded(&coderd), vec![after]);
    assert_eq!(
        proxy
            .metrics()
            .frames_rejected_for(FrameRejectReason::UnknownVariant),
        2
    );
    finish(&proxy, forwarder).await;
}

async fn a_frame_cut_off_by_the_end_of_the_stream_is_counted_truncated(io: IoMode) {
    let (coderd, proxy, forwarder) = pipeline(io).await;
    let mut client = proxy.connect();
    client.send(&vector("truncated.bin")).finish();
    assert!(client.closed_by_proxy(PATIENCE));
    wait_rejected(&proxy, FrameRejectReason::Truncated, 1).await;
    another_connection_still_works(&proxy, &coderd, 0).await;
    assert_eq!(
        coderd.requests().len(),
        1,
        "nothing of the cut frame forwarded"
    );
    finish(&proxy, forwarder).await;
}

/// The vector stream: TagV1 logs (3), garbage, TagV2 logs (4), status (5, 3),
/// unknown variant, TagV2 logs (10): three requests in this order.
async fn a_mixed_stream_forwards_its_three_requests_in_order(io: IoMode) {
    let (coderd, proxy, forwarder) = pipeline(io).await;
    proxy.connect().send(&vector("stream_mixed.bin"));
    assert!(coderd.wait_for_logs(17, PATIENCE).await);
    proxy.wait_forwarded(17).await;
    // Requests of one session may be merged; which logs arrive, and their order, may not change.
    let got: Vec<(String, String, i32)> = decoded(&coderd)
        .iter()
        .flat_map(|r| {
            r.logs.iter().map(|l| {
                (
                    r.session_id.clone(),
                    r.confined_process_name.clone(),
                    l.sequence_number,
                )
            })
        })
        .collect();
    assert_eq!(got, expected_stream_mixed());
    let m = proxy.metrics();
    assert_eq!(m.frames_rejected_for(FrameRejectReason::DecodeError), 1);
    assert_eq!(m.frames_rejected_for(FrameRejectReason::UnknownVariant), 1);
    assert_eq!(m.logs_dropped_for(LogDropReason::BoundaryChannelFull), 5);
    assert_eq!(m.logs_dropped_for(LogDropReason::BoundaryBatchFull), 3);
    finish(&proxy, forwarder).await;
}

/// (session, process, sequence number) of every log the manifest expects from
/// `stream_mixed.bin`, in order.
fn expected_stream_mixed() -> Vec<(String, String, i32)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/manifest.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let manifest: serde_json::Value = serde_json::from_str(&text).expect("manifest is JSON");
    let vector = manifest["vectors"]
        .as_array()
        .expect("vectors")
        .iter()
        .find(|v| v["file"] == "stream_mixed.bin")
        .expect("stream_mixed.bin in the manifest");
    let mut out = Vec::new();
    for request in vector["expect"]["requests"].as_array().expect("requests") {
        let session = request["session_id"].as_str().unwrap_or_default();
        let process = request["confined_process_name"]
            .as_str()
            .unwrap_or_default();
        for log in request["logs"].as_array().expect("logs") {
            let seq = log["sequence_number"].as_i64().unwrap_or(0) as i32;
            out.push((session.to_owned(), process.to_owned(), seq));
        }
    }
    assert_eq!(
        out.len(),
        17,
        "the manifest's stream carries 3 + 4 + 10 logs"
    );
    out
}

/// Bytes split at every awkward place (inside the header, inside the payload) still
/// make the same frames.
async fn frames_split_across_writes_are_reassembled(io: IoMode) {
    let (coderd, proxy, forwarder) = pipeline(io).await;
    let sent: Vec<_> = (0..3)
        .map(|i| request(SESSION, "codex", i * 5, 5))
        .collect();
    let mut bytes = Vec::new();
    for r in &sent {
        bytes.extend(boundary_log_proxy::workload::frame(Tag::V2, r));
    }
    let mut client: Client = proxy.connect();
    for chunk in bytes.chunks(7) {
        client.send(chunk);
    }
    assert!(coderd.wait_for_logs(15, PATIENCE).await);
    proxy.wait_forwarded(15).await;
    assert_eq!(all_logs(&decoded(&coderd)), all_logs(&sent));
    finish(&proxy, forwarder).await;
}

async fn the_largest_frame_is_forwarded_whole(io: IoMode) {
    let (coderd, proxy, forwarder) = pipeline(io).await;
    let bytes = vector("v2_max_size.bin");
    assert_eq!(bytes.len(), 4 + 32768);
    let expected = match boundary_log_proxy::codec::decode_message(raw_frame(&bytes)) {
        Ok(boundary_log_proxy::codec::Message::Logs(frame)) => frame.to_request(),
        other => panic!("v2_max_size.bin decodes to logs: {other:?}"),
    };
    let mut client = proxy.connect();
    for _ in 0..3 {
        client.send(&bytes);
    }
    let logs = 3 * expected.logs.len();
    assert!(coderd.wait_for_logs(logs, PATIENCE).await);
    proxy.wait_forwarded(logs as u64).await;
    let got = decoded(&coderd);
    assert_eq!(all_logs(&got), all_logs([&expected, &expected, &expected]));
    assert!(got.iter().all(|r| r.session_id == expected.session_id));
    finish(&proxy, forwarder).await;
}

/// Unknown fields are dropped or passed on, but the request coderd decodes is the one
/// without them.
async fn unknown_fields_are_ignored(io: IoMode) {
    let (coderd, proxy, forwarder) = pipeline(io).await;
    let bytes = vector("v1_unknown_field.bin");
    let expected = <ReportBoundaryLogsRequest as prost::Message>::decode(&bytes[4..])
        .expect("prost decodes the vector, skipping the unknown field");
    proxy.connect().send(&bytes);
    let logs = expected.logs.len();
    assert!(coderd.wait_for_logs(logs, PATIENCE).await);
    proxy.wait_forwarded(logs as u64).await;
    assert_eq!(decoded(&coderd), vec![expected]);
    finish(&proxy, forwarder).await;
}

/// A TagV2 frame carrying `message`.
fn envelope_frame(message: Msg) -> Vec<u8> {
    let payload = BoundaryMessage { msg: Some(message) }.encode_to_vec();
    let mut frame = Vec::new();
    boundary_log_proxy::codec::encode_frame(Tag::V2, &payload, &mut frame).unwrap();
    frame
}

/// 200 frames of a request with no logs (TagV1 and TagV2, each its own session, as
/// a client cycling sessions would send): no call to coderd, no ring slot, counted.
async fn frames_with_no_logs_make_no_call_and_are_counted_empty(io: IoMode) {
    let (coderd, proxy, forwarder) = pipeline(io).await;
    let mut client = proxy.connect();
    for i in 0..100 {
        let empty = ReportBoundaryLogsRequest {
            logs: Vec::new(),
            session_id: format!("empty-{i}"),
            confined_process_name: "codex".to_owned(),
        };
        client.send_request(Tag::V1, &empty);
        client.send(&envelope_frame(Msg::Logs(empty)));
    }
    let after = request(SESSION, "codex", 0, 2);
    client.send_request(Tag::V1, &after);
    assert!(coderd.wait_for_logs(2, PATIENCE).await);
    proxy.wait_forwarded(2).await;
    wait_rejected(&proxy, FrameRejectReason::Empty, 200).await;
    assert_eq!(coderd.calls(), 1, "only the frame with logs made a call");
    assert_eq!(decoded(&coderd), vec![after]);
    assert_eq!(proxy.metrics().logs_received.get(), 2);
    finish(&proxy, forwarder).await;
}

/// Counts that would wrap the counter (two of i64::MAX, then 2), negative ones, and
/// ones over 2^53: refused and counted; the counter only ever goes up.
async fn absurd_boundary_status_counts_are_refused_and_counters_never_go_back(io: IoMode) {
    let (coderd, proxy, forwarder) = pipeline(io).await;
    let status = |channel_full, batch_full| {
        envelope_frame(Msg::Status(BoundaryStatus {
            dropped_channel_full: channel_full,
            dropped_batch_full: batch_full,
        }))
    };
    let channel_full = || {
        proxy
            .metrics()
            .logs_dropped_for(LogDropReason::BoundaryChannelFull)
    };
    let mut client = proxy.connect();
    client.send(&status(7, 1));
    let after = |n: i32| request(SESSION, "codex", n, 1);
    // Each request after a status shows the status was handled (one connection's
    // frames are handled in order).
    client
        .send(&status(i64::MAX, 0))
        .send_request(Tag::V1, &after(0));
    proxy.wait_forwarded(1).await;
    let first = channel_full();
    client
        .send(&status(i64::MAX, 0))
        .send_request(Tag::V1, &after(1));
    proxy.wait_forwarded(2).await;
    assert!(channel_full() >= first);
    client
        .send(&status(2, 0))
        .send(&status(-5, 3))
        .send(&status(1 << 53, 0))
        .send(&status((1 << 53) + 1, 0))
        .send_request(Tag::V1, &after(2));
    proxy.wait_forwarded(3).await;
    assert!(coderd.wait_for_logs(3, PATIENCE).await);

    let m = proxy.metrics();
    assert_eq!(channel_full(), 7 + 2 + (1 << 53));
    assert_eq!(m.logs_dropped_for(LogDropReason::BoundaryBatchFull), 1);
    assert_eq!(m.frames_rejected_for(FrameRejectReason::BadStatus), 4);
    finish(&proxy, forwarder).await;
}

/// An envelope that sets its oneof twice: the last variant is used, as protobuf
/// decodes it, and what the first carried is counted as `superseded`, never dropped
/// without a count. Logs then a status: a status (5 + 3 dropped by boundary); a
/// status then logs: the logs, forwarded.
async fn an_envelope_with_two_variants_uses_the_last_and_counts_the_first(io: IoMode) {
    let (coderd, proxy, forwarder) = pipeline(io).await;
    let variant = |message: Msg| BoundaryMessage { msg: Some(message) }.encode_to_vec();
    let status = |channel_full, batch_full| {
        variant(Msg::Status(BoundaryStatus {
            dropped_channel_full: channel_full,
            dropped_batch_full: batch_full,
        }))
    };
    let frame = |payload: Vec<u8>| {
        let mut frame = Vec::new();
        boundary_log_proxy::codec::encode_frame(Tag::V2, &payload, &mut frame).unwrap();
        frame
    };
    let unused = request(SESSION, "codex", 0, 2);
    let used = request(SESSION, "codex", 2, 3);
    let mut client = proxy.connect();
    client
        .send(&frame([variant(Msg::Logs(unused)), status(5, 3)].concat()))
        .send(&frame(
            [status(100, 100), variant(Msg::Logs(used.clone()))].concat(),
        ));
    assert!(coderd.wait_for_logs(3, PATIENCE).await);
    proxy.wait_forwarded(3).await;
    wait_rejected(&proxy, FrameRejectReason::Superseded, 2).await;

    let m = proxy.metrics();
    assert_eq!(decoded(&coderd), vec![used]);
    assert_eq!(m.logs_received.get(), 3, "only the logs that were used");
    assert_eq!(m.logs_dropped_for(LogDropReason::BoundaryChannelFull), 5);
    assert_eq!(m.logs_dropped_for(LogDropReason::BoundaryBatchFull), 3);
    finish(&proxy, forwarder).await;
}

/// The whole of one frame as the decoder would hand it over.
fn raw_frame(bytes: &[u8]) -> boundary_log_proxy::codec::RawFrame {
    let mut decoder = boundary_log_proxy::codec::FrameDecoder::new();
    let mut input = bytes;
    let frame = decoder.decode(&mut input).expect("a valid frame");
    frame.expect("one whole frame")
}

on_io_modes!(
    the_largest_frame_is_forwarded_whole,
    unknown_fields_are_ignored,
    an_oversized_header_closes_the_connection,
    garbage_protobuf_is_skipped_and_the_next_frame_forwarded,
    an_unknown_tag_closes_the_connection,
    empty_and_unknown_envelopes_forward_nothing_and_keep_the_connection,
    a_frame_cut_off_by_the_end_of_the_stream_is_counted_truncated,
    a_mixed_stream_forwards_its_three_requests_in_order,
    frames_split_across_writes_are_reassembled,
    frames_with_no_logs_make_no_call_and_are_counted_empty,
    absurd_boundary_status_counts_are_refused_and_counters_never_go_back,
    an_envelope_with_two_variants_uses_the_last_and_counts_the_first,
);
