//! The sequence-gap tracker on its own: gaps between and inside frames, duplicates,
//! reordering, sessions that start mid-run, idle expiry and the table cap.

use std::time::{Duration, Instant};

use boundary_log_proxy::codec::LogFrame;
use boundary_log_proxy::seqgap::{SeqFindings, SeqTracker};
use boundary_log_proxy::workload;

const EXPIRY: Duration = Duration::from_secs(600);

/// A frame of session `session` whose logs carry exactly `seqs`.
fn frame_of(session: &str, seqs: &[i32]) -> LogFrame {
    let mut request = workload::request(session, "codex", 0, seqs.len());
    for (log, &seq) in request.logs.iter_mut().zip(seqs) {
        log.sequence_number = seq;
    }
    LogFrame::from_request(&request).expect("fits in a frame")
}

/// A frame of `len` logs numbered from `first`.
fn run(session: &str, first: i32, len: usize) -> LogFrame {
    LogFrame::from_request(&workload::request(session, "codex", first, len)).unwrap()
}

fn found(missing: u64, out_of_order: u64) -> SeqFindings {
    SeqFindings {
        missing,
        out_of_order,
    }
}

fn tracker() -> SeqTracker {
    SeqTracker::new(64, EXPIRY)
}

#[test]
fn a_contiguous_run_across_frames_finds_nothing() {
    let mut t = tracker();
    let now = Instant::now();
    for first in (0..100).step_by(10) {
        assert_eq!(t.observe(&run("s", first, 10), now), found(0, 0), "{first}");
    }
}

#[test]
fn a_session_not_yet_known_starts_at_the_first_number_it_shows() {
    let mut t = tracker();
    let now = Instant::now();
    assert_eq!(t.observe(&run("late-start", 5_000, 10), now), found(0, 0));
    assert_eq!(t.observe(&run("late-start", 5_010, 10), now), found(0, 0));
    assert_eq!(t.observe(&run("negative", -20, 10), now), found(0, 0));
    assert_eq!(t.observe(&run("negative", -10, 20), now), found(0, 0));
}

#[test]
fn numbers_skipped_between_frames_are_missing() {
    let mut t = tracker();
    let now = Instant::now();
    t.observe(&run("s", 0, 10), now);
    assert_eq!(t.observe(&run("s", 15, 5), now), found(5, 0));
    assert_eq!(
        t.observe(&run("s", 20, 5), now),
        found(0, 0),
        "back in step"
    );
    assert_eq!(t.observe(&run("s", 1_025, 1), now), found(1_000, 0));
}

#[test]
fn numbers_skipped_inside_a_frame_are_missing() {
    let mut t = tracker();
    let now = Instant::now();
    assert_eq!(
        t.observe(&frame_of("s", &[0, 1, 2, 5, 6, 9]), now),
        found(4, 0)
    );
    assert_eq!(t.observe(&run("s", 10, 3), now), found(0, 0));
}

#[test]
fn a_repeated_frame_is_out_of_order_and_not_a_gap() {
    let mut t = tracker();
    let now = Instant::now();
    t.observe(&run("s", 0, 10), now);
    assert_eq!(t.observe(&run("s", 0, 10), now), found(0, 10));
    assert_eq!(
        t.observe(&run("s", 10, 10), now),
        found(0, 0),
        "the run goes on"
    );
}

#[test]
fn a_number_repeated_inside_a_frame_is_out_of_order() {
    let mut t = tracker();
    let now = Instant::now();
    assert_eq!(
        t.observe(&frame_of("s", &[0, 1, 1, 2, 2, 2, 3]), now),
        found(0, 3)
    );
    assert_eq!(t.observe(&run("s", 4, 2), now), found(0, 0));
}

#[test]
fn a_frame_overlapping_the_expected_number_judges_each_log() {
    let mut t = tracker();
    let now = Instant::now();
    t.observe(&run("s", 0, 10), now);
    // 5..=9 were seen; 10..=14 are new.
    assert_eq!(t.observe(&run("s", 5, 10), now), found(0, 5));
    assert_eq!(t.observe(&run("s", 15, 1), now), found(0, 0));
}

#[test]
fn a_late_run_after_a_counted_gap_is_out_of_order() {
    // Reordering cannot be told from loss when the later run arrives: the gap is
    // counted then, and the late logs count as out of order when they come.
    let mut t = tracker();
    let now = Instant::now();
    t.observe(&run("s", 0, 10), now);
    assert_eq!(t.observe(&run("s", 20, 10), now), found(10, 0));
    assert_eq!(t.observe(&run("s", 10, 10), now), found(0, 10));
    assert_eq!(t.observe(&run("s", 30, 10), now), found(0, 0));
}

#[test]
fn sessions_are_tracked_apart() {
    let mut t = tracker();
    let now = Instant::now();
    t.observe(&run("a", 0, 10), now);
    t.observe(&run("b", 100, 10), now);
    assert_eq!(t.observe(&run("a", 10, 10), now), found(0, 0));
    assert_eq!(t.observe(&run("b", 112, 1), now), found(2, 0));
    assert_eq!(t.observe(&run("a", 20, 1), now), found(0, 0));
    assert_eq!(t.len(), 2);
}

#[test]
fn a_frame_without_logs_changes_nothing() {
    let mut t = tracker();
    let now = Instant::now();
    assert_eq!(t.observe(&frame_of("empty", &[]), now), found(0, 0));
    assert!(t.is_empty(), "a session with no logs is not tracked");
    t.observe(&run("s", 0, 10), now);
    assert_eq!(t.observe(&frame_of("s", &[]), now), found(0, 0));
    assert_eq!(t.observe(&run("s", 10, 1), now), found(0, 0));
}

#[test]
fn the_largest_sequence_number_repeated_counts_once_per_log() {
    let mut t = tracker();
    let now = Instant::now();
    assert_eq!(t.observe(&run("s", i32::MAX - 1, 2), now), found(0, 0));
    assert_eq!(t.observe(&frame_of("s", &[i32::MAX]), now), found(0, 1));
    assert_eq!(t.observe(&run("s", i32::MAX - 1, 2), now), found(0, 2));
}

#[test]
fn a_session_idle_for_the_expiry_is_forgotten() {
    let mut t = SeqTracker::new(64, Duration::from_secs(10));
    let t0 = Instant::now();
    t.observe(&run("s", 0, 10), t0);
    // Still known just before the expiry: the jump is a gap.
    assert_eq!(
        t.observe(&run("s", 20, 10), t0 + Duration::from_secs(9)),
        found(10, 0)
    );
    // Idle for the expiry: starts afresh at the number it shows.
    let later = t0 + Duration::from_secs(9) + Duration::from_secs(10);
    assert_eq!(t.observe(&run("s", 500, 10), later), found(0, 0));
    assert_eq!(t.observe(&run("s", 510, 10), later), found(0, 0));
}

#[test]
fn expiry_holds_between_sweeps_of_the_table() {
    let mut t = SeqTracker::new(64, Duration::from_secs(10));
    let t0 = Instant::now();
    t.observe(&run("idle", 0, 10), t0);
    // Another session's frame makes the table sweep while "idle" is 9.5s idle...
    t.observe(&run("busy", 0, 10), t0 + Duration::from_millis(9_500));
    // ...then "idle" comes back 10.2s after it was last seen, within a second of
    // that sweep: it is past the expiry all the same.
    assert_eq!(
        t.observe(&run("idle", 900, 10), t0 + Duration::from_millis(10_200)),
        found(0, 0)
    );
}

#[test]
fn idle_sessions_leave_the_table() {
    let mut t = SeqTracker::new(64, Duration::from_secs(10));
    let t0 = Instant::now();
    for i in 0..20 {
        t.observe(&run(&format!("s{i}"), 0, 1), t0);
    }
    assert_eq!(t.len(), 20);
    t.observe(&run("fresh", 0, 1), t0 + Duration::from_secs(11));
    assert_eq!(t.len(), 1, "only the session seen since is left");
}

#[test]
fn a_full_table_evicts_the_least_recently_seen_session() {
    let mut t = SeqTracker::new(3, EXPIRY);
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    t.observe(&run("a", 0, 10), at(0));
    t.observe(&run("b", 0, 10), at(1));
    t.observe(&run("c", 0, 10), at(2));
    t.observe(&run("b", 10, 10), at(3));
    t.observe(&run("d", 0, 10), at(4));
    assert_eq!(t.len(), 3);
    // b stayed (seen at 3): its jump is a gap. a was evicted: it starts afresh.
    assert_eq!(t.observe(&run("b", 30, 10), at(5)), found(10, 0));
    assert_eq!(t.observe(&run("a", 50, 10), at(6)), found(0, 0));
    assert_eq!(t.len(), 3);
    // Bringing a back evicted c, the least recently seen then.
    assert_eq!(t.observe(&run("c", 99, 1), at(7)), found(0, 0));
    assert_eq!(t.observe(&run("d", 10, 1), at(8)), found(0, 0), "d stayed");
}

#[test]
fn the_table_never_grows_past_its_cap() {
    let mut t = SeqTracker::new(100, EXPIRY);
    let t0 = Instant::now();
    for i in 0..5_000u64 {
        t.observe(
            &run(&format!("session-{i}"), 0, 1),
            t0 + Duration::from_micros(i),
        );
        assert!(t.len() <= 100);
    }
    assert_eq!(t.len(), 100);
}

#[test]
fn a_client_cycling_more_sessions_than_the_table_holds_keeps_the_most_recent() {
    let cap = 100;
    let mut t = SeqTracker::new(cap, EXPIRY);
    let t0 = Instant::now();
    let at = |i: u64| t0 + Duration::from_micros(i);
    for i in 0..1_000u64 {
        t.observe(&run(&format!("s{i}"), 0, 10), at(i));
    }
    // The last `cap` sessions are known: a jump is a gap.
    for i in 900..1_000u64 {
        assert_eq!(
            t.observe(&run(&format!("s{i}"), 15, 1), at(2_000 + i)),
            found(5, 0),
            "s{i}"
        );
    }
    // Older ones were evicted: each starts afresh (and evicts the oldest in turn).
    assert_eq!(t.observe(&run("s0", 15, 1), at(5_000)), found(0, 0));
    assert_eq!(t.len(), cap);
    assert_eq!(
        t.observe(&run("s900", 16, 1), at(5_001)),
        found(0, 0),
        "evicted by s0"
    );
}

#[test]
fn a_session_seen_again_moves_ahead_of_the_eviction_order() {
    let mut t = SeqTracker::new(3, EXPIRY);
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    for (i, s) in ["a", "b", "c"].iter().enumerate() {
        t.observe(&run(s, 0, 10), at(i as u64));
    }
    // a, then b, seen again: c is now the least recently seen.
    t.observe(&run("a", 10, 10), at(3));
    t.observe(&run("b", 10, 10), at(4));
    t.observe(&run("d", 0, 10), at(5));
    assert_eq!(t.observe(&run("a", 25, 1), at(6)), found(5, 0), "a stayed");
    assert_eq!(t.observe(&run("b", 25, 1), at(7)), found(5, 0), "b stayed");
    assert_eq!(
        t.observe(&run("c", 99, 1), at(8)),
        found(0, 0),
        "c was evicted"
    );
}

#[test]
fn a_connection_that_changes_session_id_is_tracked_under_the_new_one() {
    let mut t = tracker();
    let now = Instant::now();
    // As the intake does: the frame's key looked up apart from the observation.
    let observe = |t: &mut SeqTracker, frame: &LogFrame| {
        let key = t.key(frame.request_key().0);
        t.observe_as(key, frame, now)
    };
    assert_eq!(observe(&mut t, &run("first", 0, 10)), found(0, 0));
    assert_eq!(observe(&mut t, &run("second", 100, 10)), found(0, 0));
    assert_eq!(observe(&mut t, &run("first", 15, 1)), found(5, 0));
    assert_eq!(observe(&mut t, &run("second", 110, 1)), found(0, 0));
    // Keys looked up apart are the tracker's own: observe() sees the same sessions.
    assert_eq!(t.observe(&run("second", 113, 1), now), found(2, 0));
    let long = "x".repeat(1_000);
    assert_eq!(observe(&mut t, &run(&long, 7, 1)), found(0, 0));
    assert_eq!(observe(&mut t, &run(&long, 9, 1)), found(1, 0));
    assert_eq!(t.len(), 3);
}

#[test]
fn after_the_largest_sequence_number_comes_the_smallest_as_boundarys_int32_counter_wraps() {
    let now = Instant::now();
    let mut t = tracker();
    assert_eq!(t.observe(&run("s", i32::MAX - 2, 3), now), found(0, 0));
    assert_eq!(t.observe(&run("s", i32::MIN, 3), now), found(0, 0));
    // From there on, judged as before: a gap, then a late log.
    assert_eq!(t.observe(&frame_of("s", &[i32::MIN + 5]), now), found(2, 0));
    assert_eq!(t.observe(&frame_of("s", &[i32::MIN + 3]), now), found(0, 1));
    // The numbers before the wrap are behind it.
    assert_eq!(t.observe(&frame_of("s", &[i32::MAX]), now), found(0, 1));
    // Within one frame too, and a gap across the wrap.
    let mut t = tracker();
    let wrapped = [i32::MAX - 1, i32::MAX, i32::MIN, i32::MIN + 1];
    assert_eq!(t.observe(&frame_of("s", &wrapped), now), found(0, 0));
    let mut t = tracker();
    assert_eq!(t.observe(&frame_of("s", &[i32::MAX - 1]), now), found(0, 0));
    assert_eq!(t.observe(&frame_of("s", &[i32::MIN + 1]), now), found(2, 0));
}
