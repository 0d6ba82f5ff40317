//! Memory bounds, measured with a counting allocator: what a connection's decoder
//! holds while a frame is incomplete, what a decoded frame kept in the ring pins,
//! and what the sequence-gap table holds whatever the session ids' length.
//!
//! The allocator counts per thread, so the tests may run in parallel.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use boundary_log_proxy::codec::{
    decode_message, encode_frame, FrameDecoder, LogFrame, Message, Tag, HEADER_LEN, MAX_PAYLOAD_LEN,
};
use boundary_log_proxy::seqgap::SeqTracker;
use boundary_log_proxy::workload;

/// The system allocator, counting this thread's live bytes.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE.try_with(|live| live.set(live.get() + delta));
}

// SAFETY: every call is passed to `System` unchanged; only a counter is updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// This thread's live heap bytes.
fn live() -> isize {
    LIVE.with(Cell::get)
}

/// The most a decoder may hold: one header and one payload of the largest size.
const ONE_FRAME: usize = HEADER_LEN + MAX_PAYLOAD_LEN;
/// What a shared arena costs besides its bytes (`bytes`' reference-counted header).
const BOOKKEEPING: usize = 64;

/// A stream of frames of random sizes up to the limit (payload bytes are not
/// looked at by the framing).
fn random_stream(rng: &mut fastrand::Rng, frames: usize) -> Vec<u8> {
    let mut stream = Vec::new();
    for _ in 0..frames {
        let len = match rng.u8(..4) {
            0 => MAX_PAYLOAD_LEN,
            1 => rng.usize(MAX_PAYLOAD_LEN - 64..=MAX_PAYLOAD_LEN),
            _ => rng.usize(0..2048),
        };
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        encode_frame(Tag::V1, &payload, &mut stream).unwrap();
    }
    stream
}

#[test]
fn a_decoder_holds_at_most_one_frame_whatever_the_chunking() {
    let mut rng = fastrand::Rng::with_seed(11);
    let stream = random_stream(&mut rng, 300);
    for round in 0..20 {
        let mut decoder = FrameDecoder::new();
        let mut rest = &stream[..];
        let mut most_held = 0;
        while !rest.is_empty() {
            // Chunks as the readers hand them over: io_uring buffers are 16 KiB,
            // epoll reads up to 64 KiB; sometimes a single byte.
            let len = match rng.u8(..4) {
                0 => 1,
                1 => rng.usize(1..=16 * 1024),
                _ => rng.usize(1..=64 * 1024),
            }
            .min(rest.len());
            let (chunk, after) = rest.split_at(len);
            rest = after;
            let mut input = chunk;
            let before = live();
            let mut frames = Vec::new();
            while let Some(frame) = decoder.decode(&mut input).unwrap() {
                frames.push(frame);
            }
            // What the decoder itself keeps, once the frames it cut are gone.
            drop(frames);
            let held = live() - before;
            assert!(
                decoder.buffered() < ONE_FRAME,
                "round {round}: {}",
                decoder.buffered()
            );
            assert!(
                decoder.arena_capacity() <= MAX_PAYLOAD_LEN,
                "round {round}: arena {}",
                decoder.arena_capacity()
            );
            most_held = most_held.max(held);
        }
        assert_eq!(decoder.finish(), Ok(()));
        assert_eq!(decoder.arena_capacity(), 0, "idle at the end of the stream");
        assert!(
            most_held <= (ONE_FRAME + BOOKKEEPING) as isize,
            "round {round}: the decoder held {most_held} bytes at once"
        );
    }
}

#[test]
fn a_decoder_idle_between_frames_holds_no_heap_memory() {
    let frame = workload::frame(Tag::V2, &workload::request("s", "codex", 0, 5));
    let mut decoder = FrameDecoder::new();
    let before = live();
    for _ in 0..100 {
        let mut input = &frame[..];
        let raw = decoder.decode(&mut input).unwrap().expect("a whole frame");
        drop(raw);
    }
    assert_eq!(live(), before);
    // Mid-frame it holds the partial payload's arena, sized to the frame.
    let mut input = &frame[..frame.len() - 1];
    assert_eq!(decoder.decode(&mut input), Ok(None));
    let held = live() - before;
    assert!(
        held as usize <= frame.len(),
        "{held} bytes for a partial frame"
    );
}

/// Decodes `stream` in chunks of `chunk` bytes, keeping only the log frames (as
/// the ring does); returns them and the live bytes they pin.
fn keep_log_frames(stream: &[u8], chunk: usize) -> (Vec<LogFrame>, isize) {
    let before = live();
    let mut kept = Vec::with_capacity(1024);
    let reserved = live() - before;
    let mut decoder = FrameDecoder::new();
    for mut input in stream.chunks(chunk) {
        while let Some(raw) = decoder.decode(&mut input).unwrap() {
            if let Ok(Message::Logs(frame)) = decode_message(raw) {
                kept.push(frame);
            }
        }
    }
    drop(decoder);
    let pinned = live() - before - reserved;
    (kept, pinned)
}

#[test]
fn a_frame_kept_in_the_ring_pins_at_most_one_frame_of_memory() {
    // The worst input for sharing: each read holds one small valid frame and
    // large payloads that do not decode (skipped), so every kept frame is the
    // only user of its read's arena. Units of 64 KiB line up with epoll's reads.
    let small = workload::frame(Tag::V1, &workload::request("s", "codex", 0, 1));
    let rest = 64 * 1024 - small.len();
    let fillers = [rest / 2 - HEADER_LEN, rest - rest / 2 - HEADER_LEN];
    let mut stream = Vec::new();
    for _ in 0..200 {
        stream.extend_from_slice(&small);
        for len in fillers {
            encode_frame(Tag::V1, &vec![0xFF; len], &mut stream).unwrap();
        }
    }
    assert_eq!(stream.len(), 200 * 64 * 1024);
    for chunk in [16 * 1024, 64 * 1024, 256 * 1024] {
        let (kept, pinned) = keep_log_frames(&stream, chunk);
        assert_eq!(kept.len(), 200);
        let each = pinned / 200;
        assert!(
            each as usize <= ONE_FRAME + BOOKKEEPING,
            "chunks of {chunk}: each kept frame pins {each} bytes"
        );
    }
}

#[test]
fn the_sequence_table_holds_the_same_whatever_the_session_ids_length() {
    const SESSIONS: usize = 512;
    let retained = |id_len: usize| {
        let mut tracker = SeqTracker::new(SESSIONS, Duration::from_secs(600));
        let now = Instant::now();
        // Warm up the table's own allocation, then count what the sessions add.
        let before = live();
        for i in 0..SESSIONS {
            let id = format!("{i:0>id_len$}");
            let frame = LogFrame::from_request(&workload::request(&id, "codex", 0, 1)).unwrap();
            tracker.observe(&frame, now);
        }
        let held = live() - before;
        assert_eq!(tracker.len(), SESSIONS);
        held
    };
    let short = retained(36);
    let long = retained(16 * 1024);
    assert!(
        long <= short + 4096,
        "{SESSIONS} sessions hold {short} bytes with 36-byte ids, {long} with 16 KiB ids"
    );
    assert!(
        short / (SESSIONS as isize) < 256,
        "{short} bytes for {SESSIONS} sessions"
    );
}
