//! What disturbs the validation walk (PERF.md section 0, twelfth round). Not part of
//! the product: copy it to examples/ and run
//!   cargo build --release --example validation_disturbance
//!   taskset -c 0 target/release/examples/validation_disturbance
//! Each run validates the same 200,000 logs (8 x 10 frames as the harness writes them)
//! read 64 KiB at a time: framing first, then the read's frames validated, the
//! validation timed with the time-stamp counter around each read's frames (as
//! perf/validation_timing.patch does in the proxy). The variants alternate run by run
//! in one process, 12 runs each, so a slow spell of the host hits them all alike.
use boundary_log_proxy::codec::{decode_message, FrameDecoder, Message, Tag};
use boundary_log_proxy::loadgen::{SessionStream, Timestamps};
use std::time::{Duration, Instant};

const VARIANTS: [&str; 7] = [
    "as the harness",
    "each frame validated as it is cut",
    "  and 4 KiB of other stores a frame",
    "reads through 32 rotating 64 KiB buffers",
    "8 getppid() a read",
    "sleep 20 us a read",
    "sleep 50 us a read",
];

fn tsc() -> u64 {
    // SAFETY: rdtsc reads the time-stamp counter; it has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn run(variant: usize, bytes: &[u8], buffers: &mut [u8], junk: &mut [u8]) -> (u64, u64) {
    let (mut ticks, mut logs, mut n) = (0u64, 0u64, 0usize);
    let mut decoder = FrameDecoder::new();
    let mut raw = Vec::new();
    let validate = |frame, ticks: &mut u64, logs: &mut u64| {
        let a = tsc();
        let decoded = decode_message(frame);
        *ticks += tsc() - a;
        if let Ok(Message::Logs(f)) = decoded {
            *logs += u64::from(f.log_count());
            std::hint::black_box(&f);
        }
    };
    for (k, read) in bytes.chunks(65536).enumerate() {
        match variant {
            4 => (0..8).for_each(|_| {
                // SAFETY: getppid has no preconditions.
                unsafe { libc::getppid() };
            }),
            5 => std::thread::sleep(Duration::from_micros(20)),
            6 => std::thread::sleep(Duration::from_micros(50)),
            _ => {}
        }
        let mut input = read;
        if variant == 3 {
            let slot = &mut buffers[(k % 32) * 65536..][..read.len()];
            slot.copy_from_slice(read);
            input = slot;
        }
        if variant == 1 || variant == 2 {
            while let Ok(Some(frame)) = decoder.decode(&mut input) {
                validate(frame, &mut ticks, &mut logs);
                if variant == 2 {
                    n = (n + 4096) % junk.len();
                    junk[n..n + 4096].fill(n as u8);
                    std::hint::black_box(&junk);
                }
            }
        } else {
            while let Ok(Some(frame)) = decoder.decode(&mut input) {
                raw.push(frame);
            }
            for frame in raw.drain(..) {
                validate(frame, &mut ticks, &mut logs);
            }
        }
    }
    (ticks, logs)
}

fn main() {
    let mut bytes = Vec::new();
    SessionStream::new(20_000, 10, Tag::V2)
        .unwrap()
        .append_frames(20_000, Timestamps::Workload, &mut bytes);
    let start = (Instant::now(), tsc());
    std::thread::sleep(Duration::from_millis(200));
    let per_ns = (tsc() - start.1) as f64 / start.0.elapsed().as_nanos() as f64;
    let (mut buffers, mut junk) = (vec![0u8; 32 * 65536], vec![0u8; 1 << 20]);
    let mut results: Vec<Vec<f64>> = vec![vec![]; VARIANTS.len()];
    for r in 0..12 * VARIANTS.len() {
        let v = r % VARIANTS.len();
        let (ticks, logs) = run(v, &bytes, &mut buffers, &mut junk);
        results[v].push(ticks as f64 / per_ns / logs as f64);
    }
    for (v, ns) in results.iter_mut().enumerate() {
        ns.sort_by(f64::total_cmp);
        println!(
            "{:42} validation ns/log: min {:.1} median {:.1} max {:.1}",
            VARIANTS[v],
            ns[0],
            ns[ns.len() / 2],
            ns[ns.len() - 1]
        );
    }
}
