//! Decoding throughput of the codec (framing + validating walk) side by side with
//! full prost decoding of the same frames, in logs/s and bytes/s.

use std::hint::black_box;

use boundary_log_proxy::codec::{decode_message, FrameDecoder, Message, RawFrame, Tag};
use boundary_log_proxy::proto::envelope::{boundary_message::Msg, BoundaryMessage};
use boundary_log_proxy::workload::{self, Workload};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prost::Message as _;

/// Logs per iteration, whatever the frame size.
const LOGS_PER_ITERATION: usize = 10_000;
/// How much a socket read hands the decoder at once.
const READ_LEN: usize = 64 * 1024;

/// A connection's worth of TagV2 frames of `logs_per_frame` workload logs.
fn stream(logs_per_frame: usize) -> Vec<u8> {
    let mut w = Workload::new(42);
    let session = w.session_id();
    let mut out = Vec::new();
    for i in 0..LOGS_PER_ITERATION / logs_per_frame {
        let request = w.request(
            &session,
            "claude-code",
            (i * logs_per_frame) as i32,
            logs_per_frame,
        );
        workload::append_frame(Tag::V2, &request, &mut out).expect("frame fits");
    }
    out
}

/// Frames `bytes` read by read, handing every frame to `each`.
fn for_each_frame(bytes: &[u8], mut each: impl FnMut(RawFrame)) {
    let mut decoder = FrameDecoder::new();
    for read in bytes.chunks(READ_LEN) {
        let mut input = read;
        while let Some(frame) = decoder.decode(&mut input).expect("valid stream") {
            each(frame);
        }
    }
}

/// Our path: frame, then validate and keep the bytes.
fn decode_ours(bytes: &[u8]) -> u64 {
    let mut logs = 0;
    for_each_frame(bytes, |frame| {
        if let Ok(Message::Logs(frame)) = decode_message(frame) {
            logs += u64::from(frame.log_count());
            black_box(&frame);
        }
    });
    logs
}

/// The same frames decoded into prost structs.
fn decode_prost(bytes: &[u8]) -> u64 {
    let mut logs = 0;
    for_each_frame(bytes, |frame| {
        if let Ok(BoundaryMessage {
            msg: Some(Msg::Logs(request)),
        }) = BoundaryMessage::decode(frame.payload)
        {
            logs += request.logs.len() as u64;
            black_box(&request);
        }
    });
    logs
}

fn bench_group(c: &mut Criterion, name: &str, throughput: fn(&[u8]) -> Throughput) {
    let mut group = c.benchmark_group(name);
    for logs_per_frame in [10, 100] {
        let bytes = stream(logs_per_frame);
        assert_eq!(decode_ours(&bytes), LOGS_PER_ITERATION as u64);
        assert_eq!(decode_prost(&bytes), LOGS_PER_ITERATION as u64);
        group.throughput(throughput(&bytes));
        group.bench_with_input(
            BenchmarkId::new("ours", logs_per_frame),
            &bytes,
            |b, bytes| b.iter(|| decode_ours(black_box(bytes))),
        );
        group.bench_with_input(
            BenchmarkId::new("prost", logs_per_frame),
            &bytes,
            |b, bytes| b.iter(|| decode_prost(black_box(bytes))),
        );
    }
    group.finish();
}

fn decode_logs(c: &mut Criterion) {
    bench_group(c, "decode_logs", |_| {
        Throughput::Elements(LOGS_PER_ITERATION as u64)
    });
}

fn decode_bytes(c: &mut Criterion) {
    bench_group(c, "decode_bytes", |bytes| {
        Throughput::Bytes(bytes.len() as u64)
    });
}

criterion_group!(benches, decode_logs, decode_bytes);
criterion_main!(benches);
