//! The spool's state file: how far records have been acknowledged by the
//! destination, how far they had been written when the state was saved, and which
//! stretches of the numbering were already counted lost.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `BLPS` |
//! | 4 | 4 | CRC32C of bytes 8.. to the end of the file |
//! | 8 | 4 | version (2; 1 is read as 2 with no gaps) |
//! | 12 | 4 | n: gaps that follow (0 in version 1) |
//! | 16 | 24 | acked: seq, frame, log of the first record not yet acknowledged (frame and log past its start when a replay stopped part-way settled its first frames and logs) |
//! | 40 | 24 | appended: seq, frame, log of the next record to be written |
//! | 64 + 48 i | 48 | gap i: from (seq, frame, log) and to (seq, frame, log), a stretch between intact records whose logs were counted `spool_corrupt` |
//!
//! Integers are little-endian. The file is replaced atomically: written to
//! `state.tmp`, synced, renamed over `state`, and the directory synced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::record::Position;

const MAGIC: [u8; 4] = *b"BLPS";
const VERSION: u32 = 2;
/// Bytes before the gaps.
const LEN: usize = 64;
const GAP_LEN: usize = 48;
/// Gaps the file holds at most; one found beyond them is counted again at the next
/// start (loss over-reported, never hidden).
pub const MAX_GAPS: usize = 64;
/// The state file's name in the spool directory.
pub const FILE_NAME: &str = "state";

/// A stretch of the record numbering, between two intact records, whose records were
/// lost and counted: the next start does not count it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub from: Position,
    pub to: Position,
}

/// What the state file holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    /// Records before this position were acknowledged (delivered or given up on);
    /// with the oldest record's number and a frame and log past its start, so were
    /// its frames and logs before them.
    pub acked: Position,
    /// Records before this position had been written when the state was saved.
    pub appended: Position,
    /// Lost stretches already counted, oldest first (at most [`MAX_GAPS`]).
    pub gaps: Vec<Gap>,
}

/// Why the state file was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// There is no state file: a new spool.
    Missing,
    /// The file is there but does not check (length, magic, CRC or version).
    Damaged,
    Ok(State),
}

impl State {
    fn encode(&self) -> Vec<u8> {
        let gaps = &self.gaps[..self.gaps.len().min(MAX_GAPS)];
        let mut out = vec![0u8; LEN + GAP_LEN * gaps.len()];
        out[..4].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(gaps.len() as u32).to_le_bytes());
        let positions = [self.acked, self.appended]
            .into_iter()
            .chain(gaps.iter().flat_map(|g| [g.from, g.to]));
        for (i, p) in positions.enumerate() {
            for (j, value) in [p.seq, p.frame, p.log].into_iter().enumerate() {
                let at = 16 + 24 * i + 8 * j;
                out[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&out[8..]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<State> {
        if bytes.len() < LEN || bytes[..4] != MAGIC {
            return None;
        }
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let (crc, version, n) = (word(4), word(8), word(12) as usize);
        let known = matches!((version, n), (1, 0)) || (version == VERSION && n <= MAX_GAPS);
        if !known || bytes.len() != LEN + GAP_LEN * n || crc != crc32c::crc32c(&bytes[8..]) {
            return None;
        }
        let position = |i: usize| {
            let field = |j: usize| {
                let at = 16 + 24 * i + 8 * j;
                u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
            };
            Position {
                seq: field(0),
                frame: field(1),
                log: field(2),
            }
        };
        Some(State {
            acked: position(0),
            appended: position(1),
            gaps: (0..n)
                .map(|i| Gap {
                    from: position(2 + 2 * i),
                    to: position(3 + 2 * i),
                })
                .collect(),
        })
    }
}

/// Reads `dir/state`.
pub fn load(dir: &Path) -> io::Result<Loaded> {
    match fs::read(dir.join(FILE_NAME)) {
        Ok(bytes) => Ok(State::decode(&bytes).map_or(Loaded::Damaged, Loaded::Ok)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Loaded::Missing),
        Err(e) => Err(e),
    }
}

/// Replaces `dir/state` with `state`, durably.
pub fn save(dir: &Path, state: &State) -> io::Result<()> {
    let tmp: PathBuf = dir.join("state.tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&state.encode())?;
    file.sync_data()?;
    drop(file);
    fs::rename(&tmp, dir.join(FILE_NAME))?;
    sync_dir(dir)
}

/// Makes a directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64, frame: u64, log: u64) -> Position {
        Position { seq, frame, log }
    }

    #[test]
    fn a_saved_state_loads_back_with_its_gaps_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::Missing);
        let state = State {
            acked: at(3, 4, 50),
            appended: at(9, 12, 170),
            gaps: vec![
                Gap {
                    from: at(4, 5, 60),
                    to: at(5, 7, 80),
                },
                Gap {
                    from: at(7, 9, 100),
                    to: at(8, 10, 130),
                },
            ],
        };
        save(dir.path(), &state).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::Ok(state));
        let path = dir.path().join(FILE_NAME);
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), LEN + 2 * GAP_LEN);
        for flipped in [20, LEN + 30] {
            let mut damaged = bytes.clone();
            damaged[flipped] ^= 1;
            fs::write(&path, &damaged).unwrap();
            assert_eq!(load(dir.path()).unwrap(), Loaded::Damaged, "byte {flipped}");
        }
        // A file cut after its first gap does not check either.
        fs::write(&path, &bytes[..LEN + GAP_LEN]).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::Damaged);
    }

    #[test]
    fn a_version_1_state_file_loads_with_no_gaps() {
        // Version 1 (before gaps): 64 bytes, the word at 12 reserved as 0.
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0u8; LEN];
        bytes[..4].copy_from_slice(&MAGIC);
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        for (i, value) in [3u64, 4, 50, 9, 12, 170].into_iter().enumerate() {
            bytes[16 + 8 * i..24 + 8 * i].copy_from_slice(&value.to_le_bytes());
        }
        let crc = crc32c::crc32c(&bytes[8..]);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        fs::write(dir.path().join(FILE_NAME), &bytes).unwrap();
        assert_eq!(
            load(dir.path()).unwrap(),
            Loaded::Ok(State {
                acked: at(3, 4, 50),
                appended: at(9, 12, 170),
                gaps: Vec::new(),
            })
        );
    }

    #[test]
    fn gaps_past_the_most_a_file_holds_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let gap = |i: u64| Gap {
            from: at(2 * i, 2 * i, 2 * i),
            to: at(2 * i + 1, 2 * i + 1, 2 * i + 1),
        };
        let state = State {
            gaps: (0..MAX_GAPS as u64 + 5).map(gap).collect(),
            ..State::default()
        };
        save(dir.path(), &state).unwrap();
        let Loaded::Ok(loaded) = load(dir.path()).unwrap() else {
            panic!("saved state does not load");
        };
        assert_eq!(loaded.gaps, state.gaps[..MAX_GAPS]);
    }
}
