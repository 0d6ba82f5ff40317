//! Validating a frame before or after the framing copy, alternated in one process
//! (PERF.md, section 0, "Fourteenth round"): frames of 10 workload logs, read 64 KiB
//! at a time, each frame whole in its read either copied into the decoder's arena
//! and validated in the copy, or validated where it lies and then copied; 2048
//! frames held at once, as the ring holds them, so arenas are freed late and each
//! new one is memory the decoder did not just write. Prints each mode's CPU time per
//! log (`CLOCK_THREAD_CPUTIME_ID`) every round, then the medians and the per-round
//! ratios.
//!
//! `cargo run --release --example copy_order [ROUNDS]`

use boundary_log_proxy::codec::{
    check_payload, decode_message, FrameDecoder, LogFrame, Message, Tag,
};
use boundary_log_proxy::loadgen::{SessionStream, Timestamps};

const FRAMES: u64 = 400_000;
const LOGS_PER_FRAME: u32 = 10;
const READ_LEN: usize = 64 * 1024;
const HELD_FRAMES: usize = 2048;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill in.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Frames and validates `bytes`, validating in place when `in_place`; returns logs.
fn run(bytes: &[u8], in_place: bool, held: &mut Vec<LogFrame>) -> u64 {
    let mut logs = 0;
    let mut decoder = FrameDecoder::new();
    for read in bytes.chunks(READ_LEN) {
        let mut input = read;
        loop {
            let checked = in_place
                .then(|| decoder.peek_whole(input))
                .flatten()
                .map(|(header, payload)| check_payload(header.tag, payload));
            let Ok(Some(frame)) = decoder.decode(&mut input) else {
                break;
            };
            let message = match checked {
                Some(checked) => checked.map(|c| c.into_message(frame.payload)),
                None => decode_message(frame),
            };
            if let Ok(Message::Logs(frame)) = message {
                logs += u64::from(frame.log_count());
                if held.len() == HELD_FRAMES {
                    held.clear();
                }
                held.push(frame);
            }
        }
    }
    logs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (v[(n - 1) / 2] + v[n / 2]) / 2.0
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(8, |r| r.parse().expect("ROUNDS is a number"));
    let mut bytes = Vec::new();
    SessionStream::new(7, LOGS_PER_FRAME, Tag::V2)
        .expect("a valid stream")
        .append_frames(FRAMES, Timestamps::Workload, &mut bytes);
    let logs = FRAMES * u64::from(LOGS_PER_FRAME);
    let mut held = Vec::with_capacity(HELD_FRAMES);
    let (mut after, mut before) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first, so a slow spell of the host hits both alike.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for in_place in order {
            let start = thread_cpu_ns();
            assert_eq!(run(&bytes, in_place, &mut held), logs);
            let ns = (thread_cpu_ns() - start) as f64 / logs as f64;
            let name = if in_place {
                "validate_before_copy"
            } else {
                "validate_after_copy"
            };
            println!("round {round} {name} {ns:.1} ns/log");
            if in_place { &mut before } else { &mut after }.push(ns);
            held.clear();
        }
    }
    let ratios: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a / b).collect();
    let mut shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    shown.sort();
    println!(
        "median after {:.1}, before {:.1} ns/log; after/before per round [{}], median {:.2}",
        median(after),
        median(before),
        shown.join(", "),
        median(ratios)
    );
}
