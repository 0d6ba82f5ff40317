//! Cost per frame of the sequence-gap tracker when clients cycle through many
//! session ids: 1k distinct sessions (all fit in the default table of 4096),
//! 5k and 100k (every new frame evicts one). Each frame carries 10 logs; frames
//! are observed round-robin over the sessions, a microsecond apart.

use std::hint::black_box;
use std::time::{Duration, Instant};

use boundary_log_proxy::codec::LogFrame;
use boundary_log_proxy::seqgap::SeqTracker;
use boundary_log_proxy::workload;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// One 10-log frame per session, each with its own UUID-shaped session id.
fn frames(sessions: usize) -> Vec<LogFrame> {
    let template = workload::request("", "claude-code", 0, 10);
    (0..sessions)
        .map(|i| {
            let mut request = template.clone();
            request.session_id = format!("{:08x}-7c2b-4f7e-9a51-{:012x}", i, i * 7919);
            LogFrame::from_request(&request).expect("fits in a frame")
        })
        .collect()
}

fn churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("seqgap");
    group.throughput(Throughput::Elements(1));
    for sessions in [1_000usize, 5_000, 100_000] {
        let frames = frames(sessions);
        group.bench_with_input(
            BenchmarkId::new("observe", sessions),
            &frames,
            |b, frames| {
                let mut tracker = SeqTracker::default();
                let t0 = Instant::now();
                let mut n = 0u64;
                b.iter(|| {
                    let frame = &frames[(n % frames.len() as u64) as usize];
                    n += 1;
                    black_box(tracker.observe(frame, t0 + Duration::from_micros(n)))
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, churn);
criterion_main!(benches);
