//! The spool's state file: how far records have been acknowledged by the
//! destination and how far they had been written when the state was saved.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `BLPS` |
//! | 4 | 4 | CRC32C of bytes 8..64 |
//! | 8 | 4 | version (1) |
//! | 12 | 4 | reserved (0) |
//! | 16 | 24 | acked: seq, frame, log of the first record not yet acknowledged (frame and log past its start when a replay stopped part-way settled its first frames and logs) |
//! | 40 | 24 | appended: seq, frame, log of the next record to be written |
//!
//! Integers are little-endian. The file is replaced atomically: written to
//! `state.tmp`, synced, renamed over `state`, and the directory synced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::record::Position;

const MAGIC: [u8; 4] = *b"BLPS";
const VERSION: u32 = 1;
const LEN: usize = 64;
/// The state file's name in the spool directory.
pub const FILE_NAME: &str = "state";

/// What the state file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct State {
    /// Records before this position were acknowledged (delivered or given up on);
    /// with the oldest record's number and a frame and log past its start, so were
    /// its frames and logs before them.
    pub acked: Position,
    /// Records before this position had been written when the state was saved.
    pub appended: Position,
}

/// Why the state file was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// There is no state file: a new spool.
    Missing,
    /// The file is there but does not check (length, magic, CRC or version).
    Damaged,
    Ok(State),
}

impl State {
    fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        let fields = [
            self.acked.seq,
            self.acked.frame,
            self.acked.log,
            self.appended.seq,
            self.appended.frame,
            self.appended.log,
        ];
        for (i, value) in fields.iter().enumerate() {
            out[16 + 8 * i..24 + 8 * i].copy_from_slice(&value.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out[8..]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<State> {
        if bytes.len() != LEN || bytes[..4] != MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(bytes[4..8].try_into().ok()?);
        let version = u32::from_le_bytes(bytes[8..12].try_into().ok()?);
        if crc != crc32c::crc32c(&bytes[8..]) || version != VERSION {
            return None;
        }
        let field =
            |i: usize| u64::from_le_bytes(bytes[16 + 8 * i..24 + 8 * i].try_into().unwrap());
        Some(State {
            acked: Position {
                seq: field(0),
                frame: field(1),
                log: field(2),
            },
            appended: Position {
                seq: field(3),
                frame: field(4),
                log: field(5),
            },
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

    #[test]
    fn a_saved_state_loads_back_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::Missing);
        let state = State {
            acked: Position {
                seq: 3,
                frame: 4,
                log: 50,
            },
            appended: Position {
                seq: 9,
                frame: 12,
                log: 170,
            },
        };
        save(dir.path(), &state).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::Ok(state));
        let path = dir.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        bytes[20] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::Damaged);
    }
}
