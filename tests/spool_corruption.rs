//! The spool's recovery against damaged segment files: bytes flipped and files cut
//! at random places. Opening never panics, replays exactly the records whose bytes
//! are untouched, in order, and counts every other log as `spool_corrupt`; a
//! second start counts nothing again. And a spool filled past its limit refuses
//! exactly what does not fit, never taking more disk than the limit.

use std::path::{Path, PathBuf};

use boundary_log_proxy::spool::{AppendError, Counts, Fsync, Spool, SpoolConfig, HEADER_LEN};
use proptest::prelude::*;

fn config(dir: &Path, max_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        segment_bytes: 2048,
        ..SpoolConfig::new(dir, max_bytes, Fsync::Interval)
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// A record as written: which file, where, how long, its logs and payload.
#[derive(Debug, Clone)]
struct Written {
    file: usize,
    start: usize,
    len: usize,
    logs: u32,
    payload: Vec<u8>,
}

/// Writes `sizes.len()` records; returns where each landed (files in name order).
fn write_records(dir: &Path, sizes: &[(usize, u32)]) -> Vec<Written> {
    let (mut spool, _) = Spool::open(config(dir, 1 << 30)).unwrap();
    let mut payloads = Vec::new();
    for (i, &(size, logs)) in sizes.iter().enumerate() {
        let payload: Vec<u8> = (0..size).map(|b| (i * 31 + b) as u8).collect();
        spool.append(1, logs, &payload).unwrap();
        payloads.push((payload, logs));
    }
    spool.close().unwrap();
    // Segments are filled in order; recover each record's place from the lengths.
    let files = segments(dir);
    let mut out = Vec::new();
    let mut records = payloads.into_iter();
    for (file, path) in files.iter().enumerate() {
        let len = std::fs::metadata(path).unwrap().len() as usize;
        let mut at = 0;
        while at < len {
            let (payload, logs) = records.next().expect("more bytes than records");
            let rec = HEADER_LEN + payload.len();
            out.push(Written {
                file,
                start: at,
                len: rec,
                logs,
                payload,
            });
            at += rec;
        }
    }
    assert_eq!(out.len(), sizes.len());
    out
}

#[derive(Debug, Clone)]
enum Damage {
    /// XOR one byte (file index and offset taken modulo what exists).
    Flip { file: usize, at: usize, mask: u8 },
    /// Cut a file at a fraction (per mille) of its length.
    Cut { file: usize, per_mille: usize },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0usize..8, 0usize..1 << 16, 1u8..=255).prop_map(|(file, at, mask)| Damage::Flip {
            file,
            at,
            mask
        }),
        (0usize..8, 0usize..1000).prop_map(|(file, per_mille)| Damage::Cut { file, per_mille }),
    ]
}

fn drain(spool: &mut Spool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(record) = spool.peek().unwrap() {
        assert!(spool.ack(record.seq).unwrap());
        out.push(record.payload.to_vec());
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn damaged_segments_replay_every_intact_record_and_count_the_rest(
        sizes in prop::collection::vec((1usize..600, 0u32..20), 1..40),
        damages in prop::collection::vec(damage(), 1..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let written = write_records(dir.path(), &sizes);
        let files = segments(dir.path());
        // Per file: the bytes still there (cut) and the offsets flipped.
        let mut kept: Vec<usize> = files.iter().map(|p| std::fs::metadata(p).unwrap().len() as usize).collect();
        let mut flipped: Vec<Vec<usize>> = vec![Vec::new(); files.len()];
        for d in &damages {
            match *d {
                Damage::Flip { file, at, mask } => {
                    let file = file % files.len();
                    if kept[file] == 0 { continue; }
                    let at = at % kept[file];
                    let mut bytes = std::fs::read(&files[file]).unwrap();
                    bytes[at] ^= mask;
                    std::fs::write(&files[file], &bytes).unwrap();
                    flipped[file].push(at);
                }
                Damage::Cut { file, per_mille } => {
                    let file = file % files.len();
                    let len = kept[file] * per_mille / 1000;
                    let f = std::fs::OpenOptions::new().write(true).open(&files[file]).unwrap();
                    f.set_len(len as u64).unwrap();
                    kept[file] = len;
                }
            }
        }
        let intact: Vec<&Written> = written
            .iter()
            .filter(|w| {
                w.start + w.len <= kept[w.file]
                    && !flipped[w.file].iter().any(|&at| (w.start..w.start + w.len).contains(&at))
            })
            .collect();
        let total_logs: u64 = written.iter().map(|w| u64::from(w.logs)).sum();
        let intact_logs: u64 = intact.iter().map(|w| u64::from(w.logs)).sum();

        let (spool, recovery) = Spool::open(config(dir.path(), 1 << 30)).unwrap();
        prop_assert_eq!(recovery.intact, Counts { frames: intact.len() as u64, logs: intact_logs });
        prop_assert_eq!(recovery.corrupt, Counts {
            frames: (written.len() - intact.len()) as u64,
            logs: total_logs - intact_logs,
        });
        drop(spool);

        // A second start counts nothing again and replays the same records.
        let (mut spool, again) = Spool::open(config(dir.path(), 1 << 30)).unwrap();
        prop_assert_eq!(again.corrupt, Counts::default());
        prop_assert_eq!(again.intact, recovery.intact);
        let replayed = drain(&mut spool);
        let expected: Vec<Vec<u8>> = intact.iter().map(|w| w.payload.clone()).collect();
        prop_assert_eq!(replayed, expected);
    }
}

#[test]
fn a_spool_filled_past_its_limit_counts_exactly_what_it_refused_and_stays_within_it() {
    let dir = tempfile::tempdir().unwrap();
    let max = 50_000u64;
    let (mut spool, _) = Spool::open(config(dir.path(), max)).unwrap();
    let mut refused = Counts::default();
    let mut taken = Counts::default();
    for i in 0..400u32 {
        let payload = vec![i as u8; 100 + (i as usize * 7) % 300];
        let logs = i % 9 + 1;
        match spool.append(1, logs, &payload) {
            Ok(()) => {
                taken.frames += 1;
                taken.logs += u64::from(logs);
            }
            Err(AppendError::Full) => {
                refused.frames += 1;
                refused.logs += u64::from(logs);
            }
            Err(e) => panic!("{e}"),
        }
        let on_disk: u64 = segments(dir.path())
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(on_disk, spool.disk_bytes());
        assert!(on_disk <= max, "{on_disk} bytes on disk, limit {max}");
    }
    assert!(refused.frames > 0 && taken.frames > 0);
    assert_eq!(spool.held(), taken, "what was not refused is held");
    assert_eq!(
        taken.logs + refused.logs,
        (0..400u32).map(|i| u64::from(i % 9 + 1)).sum::<u64>()
    );
    // Near the limit: no record that was refused would have fitted.
    assert!(spool.disk_bytes() + HEADER_LEN as u64 + 100 > max);
}
