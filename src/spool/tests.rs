//! Unit tests of the spool: append, read, acknowledge, recover, limits, lock.

use super::*;

fn config(dir: &Path, max_bytes: u64, fsync: Fsync) -> SpoolConfig {
    SpoolConfig {
        segment_bytes: 1024,
        ..SpoolConfig::new(dir, max_bytes, fsync)
    }
}

fn payload(i: u32) -> Vec<u8> {
    format!("request-{i:04}").repeat(8).into_bytes()
}

fn fill(spool: &mut Spool, range: std::ops::Range<u32>) {
    for i in range {
        spool.append(1, i % 5 + 1, &payload(i)).unwrap();
    }
}

/// Reads and acknowledges everything; returns the payloads in order.
fn drain(spool: &mut Spool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(record) = spool.peek().unwrap() {
        assert!(spool.ack(record.seq).unwrap());
        out.push(record.payload.to_vec());
    }
    out
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    segment::list(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

#[test]
fn records_come_back_in_order_and_leave_only_when_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, recovery) = Spool::open(config(dir.path(), 1 << 20, Fsync::Interval)).unwrap();
    assert_eq!(recovery, Recovery::default());
    fill(&mut spool, 0..3);
    assert_eq!(
        spool.held(),
        Counts {
            frames: 3,
            logs: 1 + 2 + 3
        }
    );
    let first = spool.peek().unwrap().unwrap();
    assert_eq!(first.payload, payload(0));
    assert_eq!(
        spool.peek().unwrap().unwrap(),
        first,
        "peek does not consume"
    );
    // A later record acknowledged first (a replay settles one session's request
    // before another's) leaves the counts at once, and the spool after the oldest.
    assert!(spool.ack(first.seq + 1).unwrap());
    assert_eq!(
        spool.held(),
        Counts {
            frames: 2,
            logs: 1 + 3
        }
    );
    assert!(!spool.ack(first.seq + 7).unwrap(), "a record not held");
    assert!(spool.ack(first.seq).unwrap());
    assert_eq!(drain(&mut spool), [payload(2)]);
    assert_eq!(spool.held(), Counts::default());
    assert_eq!(spool.disk_bytes(), 0, "an empty spool keeps no segment");
    assert!(segment_files(dir.path()).is_empty());
}

#[test]
fn a_record_acknowledged_out_of_order_is_sent_again_after_a_restart_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(config(dir.path(), 1 << 20, Fsync::Interval)).unwrap();
    fill(&mut spool, 0..3);
    let first = spool.peek().unwrap().unwrap();
    assert!(spool.ack(first.seq + 1).unwrap());
    assert!(spool.ack_part(first.seq + 2, Counts { frames: 0, logs: 1 }));
    assert_eq!(
        spool.held(),
        Counts {
            frames: 2,
            logs: 1 + 2
        }
    );
    // In this process the next replay skips the record settled whole.
    assert_eq!(spool.peek().unwrap().unwrap().payload, payload(0));
    let next = spool.peek_next().unwrap();
    assert_eq!((&next.payload[..], next.done.logs), (&payload(2)[..], 1));
    assert!(spool.peek_next().is_none());
    spool.close().unwrap();
    // The state saves how far records were acknowledged in order only: after a
    // restart both are sent again whole (at least once).
    let (mut spool, recovery) = Spool::open(config(dir.path(), 1 << 20, Fsync::Interval)).unwrap();
    assert_eq!(
        recovery.intact,
        Counts {
            frames: 3,
            logs: 1 + 2 + 3
        }
    );
    assert_eq!(drain(&mut spool), [payload(0), payload(1), payload(2)]);
}

#[test]
fn a_reopened_spool_replays_what_was_not_acknowledged() {
    for fsync in [Fsync::Always, Fsync::Interval] {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(config(dir.path(), 1 << 20, fsync)).unwrap();
        fill(&mut spool, 0..40);
        for _ in 0..15 {
            let seq = spool.peek().unwrap().unwrap().seq;
            spool.ack(seq).unwrap();
        }
        let held = spool.held();
        spool.close().unwrap();

        let (mut spool, recovery) = Spool::open(config(dir.path(), 1 << 20, fsync)).unwrap();
        assert_eq!(recovery.intact, held, "{fsync:?}");
        assert_eq!(recovery.corrupt, Counts::default());
        let expected: Vec<_> = (15..40).map(payload).collect();
        fill(&mut spool, 40..42);
        let mut all = drain(&mut spool);
        assert_eq!(all.split_off(25), [payload(40), payload(41)]);
        assert_eq!(all, expected);
    }
}

#[test]
fn acknowledged_segments_are_deleted_as_the_head_moves_past_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(config(dir.path(), 1 << 20, Fsync::Interval)).unwrap();
    fill(&mut spool, 0..100);
    let files = segment_files(dir.path()).len();
    assert!(files > 3, "segments of 1 KiB: {files}");
    let on_disk: u64 = segment_files(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(spool.disk_bytes(), on_disk);
    for _ in 0..50 {
        let seq = spool.peek().unwrap().unwrap().seq;
        spool.ack(seq).unwrap();
    }
    let left = segment_files(dir.path()).len();
    assert!(left < files && left > 0, "{left} of {files}");
}

#[test]
fn a_full_spool_refuses_records_and_never_exceeds_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let max = 10_000;
    let (mut spool, _) = Spool::open(config(dir.path(), max, Fsync::Interval)).unwrap();
    let record = (HEADER_LEN + payload(0).len()) as u64;
    let mut taken = 0;
    let mut refused = 0;
    for i in 0..500 {
        match spool.append(1, 1, &payload(i)) {
            Ok(()) => taken += 1,
            Err(AppendError::Full) => refused += 1,
            Err(e) => panic!("{e}"),
        }
        assert!(spool.disk_bytes() <= max);
    }
    assert_eq!(taken, max / record, "records of {record} bytes");
    assert_eq!(refused, 500 - taken);
    // Acknowledging a whole segment makes room again.
    for _ in 0..20 {
        let seq = spool.peek().unwrap().unwrap().seq;
        spool.ack(seq).unwrap();
    }
    spool.append(1, 1, &payload(0)).unwrap();
}

#[test]
fn a_torn_tail_is_truncated_and_its_logs_counted_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(config(dir.path(), 1 << 20, Fsync::Always)).unwrap();
    fill(&mut spool, 0..3); // logs 1, 2, 3
    spool.close().unwrap();
    let path = segment_files(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 5).unwrap();
    drop(file);

    let (mut spool, recovery) = Spool::open(config(dir.path(), 1 << 20, Fsync::Always)).unwrap();
    assert_eq!(recovery.intact, Counts { frames: 2, logs: 3 });
    assert_eq!(recovery.corrupt, Counts { frames: 1, logs: 3 });
    assert_eq!(
        recovery.truncated_bytes,
        len - 5 - 2 * (HEADER_LEN + payload(0).len()) as u64
    );
    assert_eq!(drain(&mut spool), [payload(0), payload(1)]);
}

#[test]
fn a_damaged_record_in_the_middle_is_counted_and_the_ones_after_it_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(config(dir.path(), 1 << 20, Fsync::Always)).unwrap();
    fill(&mut spool, 0..3);
    spool.close().unwrap();
    let path = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let second = HEADER_LEN + payload(0).len();
    bytes[second + 2] ^= 0xff; // the second record's magic
    std::fs::write(&path, &bytes).unwrap();

    let (mut spool, recovery) = Spool::open(config(dir.path(), 1 << 20, Fsync::Always)).unwrap();
    assert_eq!(recovery.corrupt, Counts { frames: 1, logs: 2 });
    assert_eq!(recovery.intact, Counts { frames: 2, logs: 4 });
    assert_eq!(drain(&mut spool), [payload(0), payload(2)]);
}

#[test]
fn a_record_damaged_after_open_is_skipped_when_read_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(config(dir.path(), 1 << 20, Fsync::Always)).unwrap();
    fill(&mut spool, 0..2);
    let path = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[HEADER_LEN + 3] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(drain(&mut spool), [payload(1)]);
    assert_eq!(spool.take_corrupt(), Counts { frames: 1, logs: 1 });
    assert_eq!(spool.take_corrupt(), Counts::default());
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(config(dir.path(), 1 << 20, Fsync::Interval)).unwrap();
    let error = Spool::open(config(dir.path(), 1 << 20, Fsync::Interval)).unwrap_err();
    assert!(matches!(error, SpoolError::Locked { .. }), "{error}");
    assert!(
        error.to_string().contains("in use by another process"),
        "{error}"
    );
    drop(spool);
    Spool::open(config(dir.path(), 1 << 20, Fsync::Interval)).unwrap();
}

#[test]
fn interval_sync_happens_on_tick_once_the_interval_passed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(config(dir.path(), 1 << 20, Fsync::Interval)).unwrap();
    fill(&mut spool, 0..1);
    assert!(spool.segments.back().unwrap().is_dirty());
    spool.tick(Instant::now() + SYNC_INTERVAL).unwrap();
    assert!(!spool.segments.back().unwrap().is_dirty());
    assert!(!spool.state_dirty);
}

#[test]
fn the_directory_and_its_files_are_the_proxy_users_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("a/spool");
    let (mut spool, _) = Spool::open(config(&dir, 1 << 20, Fsync::Always)).unwrap();
    fill(&mut spool, 0..1);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}

/// A spool in `dir` holding 40 records (several segments), durable; from then on
/// saving its state fails as on a full disk: the state's temporary file's name is
/// taken by a directory (returned, to remove when there is "room" again).
fn forty_records_then_a_full_disk(dir: &Path) -> (Spool, PathBuf) {
    let (mut spool, _) = Spool::open(config(dir, 1 << 20, Fsync::Interval)).unwrap();
    fill(&mut spool, 0..40);
    spool.flush().unwrap();
    let blocker = dir.join("state.tmp");
    std::fs::create_dir(&blocker).unwrap();
    (spool, blocker)
}

/// A spool opened in `dir` (1 MiB, 1 KiB segments) holding records `0..n`.
fn holding(dir: &Path, n: u32, fsync: Fsync) -> Spool {
    let (mut spool, _) = Spool::open(config(dir, 1 << 20, fsync)).unwrap();
    fill(&mut spool, 0..n);
    spool
}

/// The spool in `dir` opened again, as the next start opens it.
fn reopen(dir: &Path, fsync: Fsync) -> (Spool, Recovery) {
    Spool::open(config(dir, 1 << 20, fsync)).unwrap()
}

/// Stops `spool` and starts again on `dir`: nothing counted as damaged, and records
/// `expected` replayed, in order.
fn assert_a_restart_replays(
    spool: Spool,
    dir: &Path,
    fsync: Fsync,
    expected: std::ops::Range<u32>,
) {
    drop(spool);
    let (mut spool, recovery) = reopen(dir, fsync);
    assert_eq!(recovery.corrupt, Counts::default());
    assert_eq!(drain(&mut spool), expected.map(payload).collect::<Vec<_>>());
}

#[test]
fn delivered_segments_are_deleted_even_when_the_state_cannot_be_saved() {
    // On a full filesystem the state file's new block is refused. The delivered
    // segments must still go (they are what fills the disk), the state is saved once
    // there is room, and a restart replays nothing.
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, blocker) = forty_records_then_a_full_disk(dir.path());
    assert!(segment_files(dir.path()).len() > 2);
    let mut acked = 0;
    while let Some(record) = spool.peek().unwrap() {
        match spool.ack(record.seq) {
            Ok(true) | Err(AckError(_)) => acked += 1,
            Ok(false) => panic!("record {} is the oldest", record.seq),
        }
    }
    assert_eq!((acked, spool.records()), (40, 0));
    assert_eq!(spool.disk_bytes(), 0);
    assert!(
        segment_files(dir.path()).is_empty(),
        "delivered segments deleted"
    );
    assert!(spool.flush().is_err(), "the state still cannot be saved");
    std::fs::remove_dir(&blocker).unwrap();
    spool.tick(Instant::now() + SYNC_INTERVAL).unwrap();
    assert!(!spool.is_dirty(), "saved at the next tick");
    drop(spool);
    let (mut spool, recovery) = reopen(dir.path(), Fsync::Interval);
    assert_eq!(recovery, Recovery::default());
    assert!(drain(&mut spool).is_empty());
}

#[test]
fn delivered_records_deleted_before_their_state_was_saved_are_not_replayed() {
    // The process stops (here: its last save fails too) after deleting delivered
    // segments it could not record as acknowledged: the next start finds them gone
    // and counts them as damaged, which over-reports loss but sends nothing twice.
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, blocker) = forty_records_then_a_full_disk(dir.path());
    while let Some(record) = spool.peek().unwrap() {
        let _ = spool.ack(record.seq);
    }
    drop(spool);
    std::fs::remove_dir(&blocker).unwrap();
    let (mut spool, recovery) = reopen(dir.path(), Fsync::Interval);
    assert_eq!(recovery.intact, Counts::default());
    assert_eq!(recovery.corrupt.frames, 40);
    assert!(drain(&mut spool).is_empty());
}

#[test]
fn a_spool_whose_state_cannot_be_saved_still_opens_and_saves_it_later() {
    // A full disk at start (the state's new block refused) must not stop the proxy
    // from starting: a supervisor would restart it in a loop.
    let dir = tempfile::tempdir().unwrap();
    drop(holding(dir.path(), 3, Fsync::Interval));
    let blocker = dir.path().join("state.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let (mut spool, recovery) = reopen(dir.path(), Fsync::Interval);
    assert!(recovery.state_unsaved);
    assert_eq!(recovery.intact.frames, 3);
    assert!(spool.is_dirty());
    std::fs::remove_dir(&blocker).unwrap();
    spool.tick(Instant::now() + SYNC_INTERVAL).unwrap();
    assert!(!spool.is_dirty());
    assert_eq!(drain(&mut spool), (0..3).map(payload).collect::<Vec<_>>());
}

#[test]
fn a_deleted_spool_directory_is_made_again_with_the_records_it_held() {
    // A tmp cleaner deletes the directory while records are held: they live on only
    // in the open files, and a restart would lose them without a count.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let (mut spool, _) = Spool::open(config(&path, 1 << 20, Fsync::Interval)).unwrap();
    assert!(spool.rebuild_if_lost().unwrap().is_none());
    fill(&mut spool, 0..30);
    let first = spool.peek().unwrap().unwrap();
    std::fs::remove_dir_all(&path).unwrap();
    assert_eq!(spool.rebuild_if_lost().unwrap(), Some(30));
    assert!(spool.rebuild_if_lost().unwrap().is_none(), "made once");
    assert!(!segment_files(&path).is_empty());
    // The same numbers: a replay in flight still acknowledges its record.
    assert_eq!(spool.peek().unwrap().unwrap(), first);
    assert!(spool.ack(first.seq).unwrap());
    fill(&mut spool, 30..32);
    drop(spool);
    let (mut spool, recovery) = reopen(&path, Fsync::Interval);
    assert_eq!(recovery.corrupt, Counts::default());
    assert_eq!(recovery.intact.frames, 31);
    assert_eq!(drain(&mut spool), (1..32).map(payload).collect::<Vec<_>>());
}

#[test]
fn a_replaced_spool_directory_gets_the_records_and_the_moved_one_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let moved = dir.path().join("moved");
    let mut spool = holding(&path, 5, Fsync::Interval);
    spool.flush().unwrap();
    std::fs::rename(&path, &moved).unwrap();
    std::fs::create_dir(&path).unwrap();
    let before = segment_files(&moved);
    assert_eq!(spool.rebuild_if_lost().unwrap(), Some(5));
    assert_eq!(
        segment_files(&moved),
        before,
        "the moved directory is not touched"
    );
    assert_eq!(drain(&mut spool), (0..5).map(payload).collect::<Vec<_>>());
}

#[test]
fn a_rebuild_that_failed_is_tried_again_under_the_lock_it_took() {
    // The first rebuild fails after making and locking the directory (here: its
    // state cannot be saved). The next one must not trip over its own lock.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let mut spool = holding(&path, 30, Fsync::Interval);
    std::fs::remove_dir_all(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let blocker = path.join("state.tmp");
    std::fs::create_dir(&blocker).unwrap();
    assert!(spool.rebuild_if_lost().is_err());
    assert!(
        spool.rebuild_if_lost().is_err(),
        "still failing, not locked out"
    );
    std::fs::remove_dir(&blocker).unwrap();
    assert_eq!(spool.rebuild_if_lost().unwrap(), Some(30));
    assert_a_restart_replays(spool, &path, Fsync::Interval, 0..30);
}

#[test]
fn a_copy_put_in_the_directorys_place_is_replaced_by_the_records_held() {
    // An operator restores a copy of the directory (same segment file names).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let mut spool = holding(&path, 30, Fsync::Interval);
    spool.flush().unwrap();
    let first = spool.peek().unwrap().unwrap();
    assert!(spool.ack(first.seq).unwrap());
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for file in std::fs::read_dir(&path).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), copy.join(file.file_name())).unwrap();
    }
    std::fs::rename(&path, dir.path().join("old")).unwrap();
    std::fs::rename(&copy, &path).unwrap();
    assert_eq!(spool.rebuild_if_lost().unwrap(), Some(29));
    assert_a_restart_replays(spool, &path, Fsync::Interval, 1..30);
}

#[test]
fn segment_files_deleted_from_a_directory_that_stays_are_written_again() {
    // A cleaner deletes files but not the directory (`rm -f DIR/*`), the lock file
    // included: the records are written again and the directory locked again.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let mut spool = holding(&path, 30, Fsync::Interval);
    spool.flush().unwrap();
    for file in std::fs::read_dir(&path).unwrap() {
        std::fs::remove_file(file.unwrap().path()).unwrap();
    }
    assert_eq!(spool.rebuild_if_lost().unwrap(), Some(30));
    assert!(spool.rebuild_if_lost().unwrap().is_none());
    assert!(
        DirLock::acquire(&path).is_err(),
        "the new lock file is held"
    );
    assert_a_restart_replays(spool, &path, Fsync::Interval, 0..30);
}

/// Three records in `dir`, the middle one damaged: the next open counts a gap.
fn three_records_the_middle_one_damaged(dir: &Path) {
    holding(dir, 3, Fsync::Always).close().unwrap();
    let path = segment_files(dir).pop().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[HEADER_LEN + payload(0).len() + 2] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
}

#[test]
fn a_start_that_counts_a_gap_opens_even_when_the_state_cannot_be_saved() {
    let dir = tempfile::tempdir().unwrap();
    three_records_the_middle_one_damaged(dir.path());
    std::fs::create_dir(dir.path().join("state.tmp")).unwrap();
    let (_spool, recovery) = Spool::open(config(dir.path(), 1 << 20, Fsync::Always)).unwrap();
    assert!(recovery.state_unsaved);
    assert_eq!(recovery.intact.frames, 2);
}

#[test]
fn a_rebuild_counts_a_damaged_record_instead_of_giving_it_a_fresh_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let mut spool = holding(&path, 2, Fsync::Always);
    let seg = segment_files(&path).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[HEADER_LEN + 3] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();
    std::fs::remove_dir_all(&path).unwrap();
    assert_eq!(spool.rebuild_if_lost().unwrap(), Some(2));
    assert_eq!(drain(&mut spool), [payload(1)]);
    assert_eq!(spool.take_corrupt(), Counts { frames: 1, logs: 1 });
}

#[test]
fn a_spool_that_lost_its_lock_to_another_process_writes_nothing_more_there() {
    // Its lock file deleted, a process that locks only the lock file (an older
    // proxy: this one also locks the directory, which a second one cannot take,
    // `a_second_spool_cannot_take_a_directory_whose_lock_file_was_deleted`) takes
    // it before this one's next look: appends are refused (counted by the caller)
    // and nothing is written, saved or deleted there.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let mut a = holding(&path, 3, Fsync::Always);
    std::fs::remove_file(path.join("lock")).unwrap();
    let b = std::fs::File::create(path.join("lock")).unwrap();
    // SAFETY: `flock` only reads the descriptor `b` keeps open.
    let locked = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&b),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(locked, 0);
    assert!(matches!(
        a.rebuild_if_lost(),
        Err(SpoolError::Locked { .. })
    ));
    let sizes = |path: &Path| -> Vec<u64> {
        segment_files(path)
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .collect()
    };
    let before = (sizes(&path), std::fs::read(path.join("state")).unwrap());
    assert!(a.append(1, 1, &payload(3)).is_err());
    let first = a.peek().unwrap().unwrap();
    assert!(a.ack(first.seq).is_err(), "acknowledged, not saved there");
    drop(a);
    assert_eq!(
        before,
        (sizes(&path), std::fs::read(path.join("state")).unwrap())
    );
    drop(b);
}

#[test]
fn a_second_spool_cannot_take_a_directory_whose_lock_file_was_deleted() {
    // The lock file deleted (a tmp cleaner): a second proxy started within the
    // 50 ms before the first made a new one took the directory, and both replayed
    // it (found by an operator review). The directory's own lock still holds.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let mut a = holding(&path, 3, Fsync::Always);
    std::fs::remove_file(path.join("lock")).unwrap();
    assert!(matches!(
        Spool::open(config(&path, 1 << 20, Fsync::Always)),
        Err(SpoolError::Locked { .. })
    ));
    // The first makes its lock file again, and keeps its records.
    assert!(a.rebuild_if_lost().unwrap().is_none());
    assert!(path.join("lock").exists());
    assert_eq!(drain(&mut a), [payload(0), payload(1), payload(2)]);
}

#[test]
fn a_deleted_state_file_is_saved_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = holding(dir.path(), 3, Fsync::Interval);
    spool.flush().unwrap();
    std::fs::remove_file(dir.path().join("state")).unwrap();
    assert!(spool.rebuild_if_lost().unwrap().is_none());
    spool.tick(Instant::now() + SYNC_INTERVAL).unwrap();
    assert!(dir.path().join("state").exists());
}

#[test]
fn a_delivered_segment_that_cannot_be_deleted_still_counts_until_it_is() {
    // Its file cannot be deleted (here a directory took its name; EPERM on an
    // immutable directory): its bytes still take the disk and count in
    // disk_bytes, and the deletion is tried again at every tick.
    let dir = tempfile::tempdir().unwrap();
    let mut spool = holding(dir.path(), 40, Fsync::Interval);
    spool.flush().unwrap();
    let first = segment_files(dir.path()).remove(0);
    std::fs::remove_file(&first).unwrap();
    std::fs::create_dir(&first).unwrap();
    let before = spool.disk_bytes();
    let mut failed = 0;
    while spool.disk_bytes() == before {
        let record = spool.peek().unwrap().unwrap();
        if spool.ack(record.seq).is_err() {
            failed += 1;
        }
        if failed > 0 {
            break;
        }
    }
    assert_eq!(failed, 1);
    assert_eq!(spool.disk_bytes(), before, "its bytes still count");
    assert!(spool.is_dirty());
    spool.tick(Instant::now() + SYNC_INTERVAL).unwrap_err();
    std::fs::remove_dir(&first).unwrap();
    spool.tick(Instant::now() + SYNC_INTERVAL).unwrap();
    assert!(spool.disk_bytes() < before, "counted off once it is gone");
}

#[test]
fn a_rebuild_counts_a_record_cut_short_as_a_replay_would() {
    // A held segment truncated under the proxy (the last record cut short), then
    // the directory deleted: the cut record is counted, the rebuild goes through.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let mut spool = holding(&path, 2, Fsync::Always);
    let seg = segment_files(&path).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 4)
        .unwrap();
    std::fs::remove_dir_all(&path).unwrap();
    assert_eq!(spool.rebuild_if_lost().unwrap(), Some(2));
    assert_eq!(drain(&mut spool), [payload(0)]);
    assert_eq!(spool.take_corrupt(), Counts { frames: 1, logs: 2 });
}

#[test]
fn part_of_the_oldest_record_acknowledged_survives_a_restart_and_leaves_the_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(config(dir.path(), 1 << 20, Fsync::Interval)).unwrap();
    spool.append(4, 10, &payload(0)).unwrap();
    spool.append(1, 3, &payload(1)).unwrap();
    let head = spool.peek().unwrap().unwrap();
    let part = Counts { frames: 1, logs: 4 };
    // Only inside the oldest record, and never back.
    assert!(!spool.ack_part(head.seq + 1, part));
    assert!(!spool.ack_part(
        head.seq,
        Counts {
            frames: 4,
            logs: 10
        }
    ));
    assert!(!spool.ack_part(head.seq, Counts { frames: 5, logs: 4 }));
    assert!(spool.ack_part(head.seq, part));
    assert!(!spool.ack_part(head.seq, Counts { frames: 0, logs: 2 }));
    assert_eq!(spool.held(), Counts { frames: 4, logs: 9 });
    assert_eq!(spool.peek().unwrap().unwrap().done, part);
    drop(spool);

    let (mut spool, recovery) = Spool::open(config(dir.path(), 1 << 20, Fsync::Interval)).unwrap();
    assert_eq!(recovery.intact, Counts { frames: 4, logs: 9 });
    assert_eq!(recovery.corrupt, Counts::default());
    let head = spool.peek().unwrap().unwrap();
    assert_eq!((head.payload.to_vec(), head.done), (payload(0), part));
    // The whole record acknowledged: the next one starts clean.
    assert!(spool.ack(head.seq).unwrap());
    assert_eq!(spool.held(), Counts { frames: 1, logs: 3 });
    assert_eq!(spool.peek().unwrap().unwrap().done, Counts::default());
}

#[test]
fn records_keep_their_numbers_through_a_second_rebuild_after_one_left_a_damaged_record_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let mut spool = holding(&path, 3, Fsync::Always);
    // The middle record's payload goes bad, then the directory is deleted: the first
    // rebuild leaves it out (counted), the others keep their numbers.
    let seg = segment_files(&path).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[HEADER_LEN + payload(0).len() + HEADER_LEN + 2] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    std::fs::remove_dir_all(&path).unwrap();
    assert_eq!(spool.rebuild_if_lost().unwrap(), Some(3));
    assert_eq!(spool.take_corrupt(), Counts { frames: 1, logs: 2 });
    std::fs::remove_dir_all(&path).unwrap();
    assert_eq!(spool.rebuild_if_lost().unwrap(), Some(2));
    assert_eq!(spool.take_corrupt(), Counts::default());
    let first = spool.peek().unwrap().unwrap();
    assert!(spool.ack(first.seq).unwrap());
    let last = spool.peek().unwrap().unwrap();
    assert_eq!(
        (first.seq + 2, last.payload.to_vec()),
        (last.seq, payload(2))
    );
}

#[test]
fn a_rebuild_writes_the_record_being_replayed_from_the_copy_read_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let mut spool = holding(&path, 2, Fsync::Always);
    // The oldest record is read for its replay; then its bytes on disk go bad and the
    // directory is deleted. The replay delivers the copy it read: the rebuild writes
    // that copy, and counts nothing as damaged (the logs are not lost, and counting
    // them would count them twice once delivered).
    let head = spool.peek().unwrap().unwrap();
    let seg = segment_files(&path).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[HEADER_LEN + 2] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    std::fs::remove_dir_all(&path).unwrap();
    assert_eq!(spool.rebuild_if_lost().unwrap(), Some(2));
    assert_eq!(spool.take_corrupt(), Counts::default());
    assert_eq!(
        spool.held(),
        Counts {
            frames: 2,
            logs: 1 + 2
        }
    );
    assert!(spool.ack(head.seq).unwrap(), "still the oldest record");
    assert_eq!(drain(&mut spool), [payload(1)]);
}

/// Each segment file's name and bytes.
fn segment_contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    segment_files(dir)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Flips the magic of record `i` of `fill`'s records (all the same length), found in
/// whichever segment holds it.
fn damage_record(dir: &Path, i: usize) {
    let record = HEADER_LEN + payload(0).len();
    let mut seen = 0;
    for path in segment_files(dir) {
        let mut bytes = std::fs::read(&path).unwrap();
        let here = bytes.len() / record;
        if i < seen + here {
            bytes[(i - seen) * record + 2] ^= 0xff;
            std::fs::write(&path, &bytes).unwrap();
            return;
        }
        seen += here;
    }
    panic!("no record {i}");
}

#[test]
fn a_damaged_record_in_the_middle_is_counted_once_across_restarts_and_no_segment_is_rewritten() {
    // A start that rewrote the segments (to close the gap) could be killed half-way
    // and leave copies that the next start counted lost and replayed as well; the
    // gap is saved with the state instead, and the files are left as they are.
    let dir = tempfile::tempdir().unwrap();
    holding(dir.path(), 20, Fsync::Always).close().unwrap();
    assert!(segment_files(dir.path()).len() >= 3);
    damage_record(dir.path(), 10);
    let before = segment_contents(dir.path());

    let (spool, recovery) = reopen(dir.path(), Fsync::Always);
    assert_eq!(recovery.corrupt, Counts { frames: 1, logs: 1 });
    assert!(segment_contents(dir.path()) == before, "segments rewritten");
    drop(spool);

    let (mut spool, recovery) = reopen(dir.path(), Fsync::Always);
    assert_eq!(recovery.corrupt, Counts::default(), "counted again");
    let expected: Vec<_> = (0..20).filter(|i| *i != 10).map(payload).collect();
    assert_eq!(drain(&mut spool), expected);
}

#[test]
fn damage_next_to_a_gap_already_counted_is_counted_and_the_gap_is_not() {
    let dir = tempfile::tempdir().unwrap();
    holding(dir.path(), 6, Fsync::Always).close().unwrap();
    damage_record(dir.path(), 2); // 3 logs
    let (spool, recovery) = reopen(dir.path(), Fsync::Always);
    assert_eq!(recovery.corrupt, Counts { frames: 1, logs: 3 });
    drop(spool);
    damage_record(dir.path(), 3); // 4 logs, gone bad since
    let (mut spool, recovery) = reopen(dir.path(), Fsync::Always);
    assert_eq!(recovery.corrupt, Counts { frames: 1, logs: 4 });
    assert_eq!(drain(&mut spool), [0, 1, 4, 5].map(payload));
}

#[test]
fn without_a_state_file_a_damaged_first_record_whose_header_checks_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    holding(dir.path(), 3, Fsync::Always).close().unwrap(); // logs 1, 2, 3
    std::fs::remove_file(dir.path().join("state")).unwrap();
    let path = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[HEADER_LEN + 3] ^= 1; // record 0's payload; its header still checks
    std::fs::write(&path, &bytes).unwrap();

    let (mut spool, recovery) = reopen(dir.path(), Fsync::Always);
    assert_eq!(drain(&mut spool), [payload(1), payload(2)]);
    assert_eq!(recovery.corrupt, Counts { frames: 1, logs: 1 });
}

#[test]
fn without_a_state_file_the_spools_first_segment_vouches_for_record_0() {
    // Record 0's header is destroyed too: the first segment's name (0) says where
    // the numbering started.
    let dir = tempfile::tempdir().unwrap();
    holding(dir.path(), 3, Fsync::Always).close().unwrap();
    std::fs::remove_file(dir.path().join("state")).unwrap();
    damage_record(dir.path(), 0);

    let (mut spool, recovery) = reopen(dir.path(), Fsync::Always);
    assert_eq!(recovery.corrupt, Counts { frames: 1, logs: 1 });
    assert_eq!(drain(&mut spool), [payload(1), payload(2)]);
}

#[test]
fn a_record_a_rebuild_left_out_is_not_counted_again_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let mut spool = holding(&path, 3, Fsync::Always);
    damage_record(&path, 1);
    std::fs::remove_dir_all(&path).unwrap();
    assert_eq!(spool.rebuild_if_lost().unwrap(), Some(3));
    assert_eq!(spool.take_corrupt(), Counts { frames: 1, logs: 2 });
    drop(spool);

    let (mut spool, recovery) = reopen(&path, Fsync::Always);
    assert_eq!(recovery.corrupt, Counts::default(), "counted again");
    assert_eq!(drain(&mut spool), [payload(0), payload(2)]);
}

#[test]
fn without_a_state_file_intact_records_before_a_torn_tail_in_the_first_segment_are_replayed() {
    // Segment 0 was retired: the first segment left starts with intact records; a
    // torn record at its end must not set where the numbering starts.
    let dir = tempfile::tempdir().unwrap();
    let mut spool = holding(dir.path(), 16, Fsync::Always);
    for _ in 0..8 {
        let seq = spool.peek().unwrap().unwrap().seq;
        assert!(spool.ack(seq).unwrap());
    }
    spool.close().unwrap();
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 1, "segment 0 retired");
    std::fs::remove_file(dir.path().join("state")).unwrap();
    let len = std::fs::metadata(&files[0]).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[0])
        .unwrap();
    file.set_len(len - 10).unwrap();
    drop(file);

    let (mut spool, recovery) = reopen(dir.path(), Fsync::Always);
    assert_eq!(
        recovery.corrupt,
        Counts { frames: 1, logs: 1 },
        "only record 15 is lost"
    );
    assert_eq!(drain(&mut spool), (8..15).map(payload).collect::<Vec<_>>());
}

// Found by a review of 38614fb (records settled out of order, rebuilds and the stop).
#[test]
fn a_rebuild_that_leaves_out_a_damaged_oldest_record_keeps_the_next_ones_settlement() {
    // Record 2 was settled whole out of order (a session's request of an earlier
    // replay), record 0 then settled: record 1 is the oldest, not read since. Its
    // bytes go bad and the directory is deleted: the rebuild leaves record 1 out
    // (counted spool_corrupt); record 2 becomes the oldest with its settlement still
    // in `behind`, where neither `peek` nor `ack` of the oldest looks.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let mut spool = holding(&path, 3, Fsync::Always);
    let first = spool.peek().unwrap().unwrap();
    assert!(spool.ack(first.seq + 2).unwrap());
    assert!(spool.ack(first.seq).unwrap());
    assert_eq!(spool.held(), Counts { frames: 1, logs: 2 });
    damage_record(&path, 1);
    std::fs::remove_dir_all(&path).unwrap();
    assert_eq!(spool.rebuild_if_lost().unwrap(), Some(2));
    assert_eq!(spool.take_corrupt(), Counts { frames: 1, logs: 2 });
    assert_eq!(spool.held(), Counts::default());
    // Record 2 was delivered: nothing is left to replay, and a record appended
    // after is the only one replayed, the counts ending at zero (they underflowed).
    let next = spool.peek().unwrap();
    assert!(
        next.is_none(),
        "record 2, settled already, is replayed again: {:?}",
        next.map(|r| (r.seq, r.done))
    );
    fill(&mut spool, 3..4);
    let mut replayed = Vec::new();
    while let Some(record) = spool.peek().unwrap() {
        replayed.push(record.seq - first.seq);
        assert!(spool.ack(record.seq).unwrap());
    }
    assert_eq!(replayed, [3], "only record 3 was left to deliver");
    assert_eq!(spool.held(), Counts::default());
}

#[test]
fn a_rebuild_that_fails_keeps_what_was_settled_out_of_order() {
    // Record 2 settled whole out of order; its bytes then go bad and the directory
    // is deleted; the rebuild fails at its end (the state cannot be saved) and is
    // rolled back: what was settled of record 2 must still be known.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let mut spool = holding(&path, 3, Fsync::Always);
    let first = spool.peek().unwrap().unwrap();
    assert!(spool.ack(first.seq + 2).unwrap());
    let before = spool.held();
    assert_eq!(
        before,
        Counts {
            frames: 2,
            logs: 1 + 2
        }
    );
    damage_record(&path, 2);
    std::fs::remove_dir_all(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let blocker = path.join("state.tmp");
    std::fs::create_dir(&blocker).unwrap();
    assert!(spool.rebuild_if_lost().is_err());
    assert_eq!(spool.held(), before, "spool_logs after a failed rebuild");
    std::fs::remove_dir(&blocker).unwrap();
    assert_eq!(spool.rebuild_if_lost().unwrap(), Some(3));
    assert_eq!(
        spool.take_corrupt(),
        Counts::default(),
        "record 2 was delivered: counting it spool_corrupt counts it twice"
    );
}

#[test]
fn abandon_does_not_give_up_records_still_in_files_on_disk() {
    // Only the newest segment file is deleted; the older ones are still in the
    // directory (a rebuild that failed before its clean-up). The stop gives up
    // nothing: the next start replays what the files hold (found by a review: it
    // gave up every record held, and the next start deleted the intact files).
    let dir = tempfile::tempdir().unwrap();
    let mut spool = holding(dir.path(), 30, Fsync::Always);
    spool.flush().unwrap();
    let files = segment_files(dir.path());
    assert!(files.len() > 2);
    std::fs::remove_file(files.last().unwrap()).unwrap();
    assert_eq!(spool.abandon_if_unreachable(), None);
    drop(spool);
    let (_spool, recovery) = reopen(dir.path(), Fsync::Always);
    assert!(
        recovery.intact.frames > 0,
        "records in the files still on disk are replayed at the next start"
    );
}
