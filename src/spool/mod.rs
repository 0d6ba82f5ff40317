//! The disk spool: requests the destination could not take, kept in append-only
//! segment files until it acknowledges them, so a long outage or a restart loses
//! no audit log (docs/spool.md).
//!
//! Layers, one a file: `record` (the bytes of one record), `segment` (one file of
//! records), `state` (what was acknowledged), `lock` (one process a directory);
//! this file is the spool itself: append, read the oldest, acknowledge, recover.
//!
//! The spool is a queue in the order requests were appended; the forwarder reads
//! and acknowledges from its head only, so every session's order is kept.

mod lock;
mod record;
mod segment;
mod state;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use lock::{DirLock, LockError};
pub use record::{Position, HEADER_LEN};

use record::Header;
use segment::Segment;
use state::{Gap, Loaded, State};

/// With [`Fsync::Interval`], the longest written data waits for its sync.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// `--spool-max-bytes` default: 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

/// When appended records are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// After every append, before it returns.
    Always,
    /// Within [`SYNC_INTERVAL`] of the append (through [`Spool::tick`]).
    Interval,
}

/// Where and how big.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Most bytes the segment files may take together.
    pub max_bytes: u64,
    pub fsync: Fsync,
    /// A new segment file is started once the current one holds this many bytes.
    pub segment_bytes: u64,
}

impl SpoolConfig {
    /// A config with segments of an eighth of `max_bytes` (4 KiB to 32 MiB).
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64, fsync: Fsync) -> Self {
        Self {
            dir: dir.into(),
            max_bytes,
            fsync,
            segment_bytes: (max_bytes / 8).clamp(4 << 10, 32 << 20),
        }
    }
}

/// Frames and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub frames: u64,
    pub logs: u64,
}

impl Counts {
    fn add(&mut self, frames: u64, logs: u64) {
        self.frames += frames;
        self.logs += logs;
    }

    /// The frames and logs of the record `header` after its first `done`.
    fn rest_of(header: &record::Header, done: Counts) -> Counts {
        Counts {
            frames: u64::from(header.frames) - done.frames,
            logs: u64::from(header.logs) - done.logs,
        }
    }

    /// What a saved `acked` position inside the record `header` says a replay
    /// settled of its start; nothing when it is not inside (a state from before
    /// partial acknowledgements, or one that does not fit the record).
    fn settled_in(acked: Position, header: &record::Header) -> Counts {
        let at = header.at;
        let inside = acked.seq == at.seq
            && acked.log > at.log
            && acked.log - at.log < u64::from(header.logs)
            && acked.frame >= at.frame
            && acked.frame - at.frame <= u64::from(header.frames);
        if !inside {
            return Counts::default();
        }
        Counts {
            frames: acked.frame - at.frame,
            logs: acked.log - at.log,
        }
    }

    fn between(from: Position, to: Position) -> Counts {
        if to.seq <= from.seq {
            return Counts::default();
        }
        Counts {
            frames: to.frame.saturating_sub(from.frame),
            logs: to.log.saturating_sub(from.log),
        }
    }
}

/// What opening the spool found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovery {
    /// Intact records not yet acknowledged: they will be replayed.
    pub intact: Counts,
    /// Records lost to damage (corrupt bytes, a torn tail, a missing file).
    pub corrupt: Counts,
    /// Bytes cut from segment tails.
    pub truncated_bytes: u64,
    /// Bytes that held no intact record (including the truncated ones).
    pub damaged_bytes: u64,
    /// The state file was there but did not check: acknowledged records may be replayed again.
    pub state_damaged: bool,
    /// The recovered state could not be saved (a full disk): the spool opened all the
    /// same and saves it at its next tick; a stop before then may count the same
    /// damage again at the next start.
    pub state_unsaved: bool,
}

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool directory {dir}: {source}")]
    Dir {
        dir: String,
        #[source]
        source: io::Error,
    },
    #[error("spool directory {dir} is in use by another process ({source})")]
    Locked {
        dir: String,
        #[source]
        source: LockError,
    },
    #[error("spool {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: io::Error,
    },
}

/// Why an append did not take a record.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// It would take the segment files past `max_bytes`.
    #[error("the spool is full")]
    Full,
    #[error("writing to the spool: {0}")]
    Io(#[from] io::Error),
}

/// The record was acknowledged and left the spool, but deleting the segments it no
/// longer needs or saving how far records were acknowledged failed (on a full disk,
/// say). What is left to save is saved at the next [`Spool::tick`].
#[derive(Debug, thiserror::Error)]
#[error("updating the spool after an acknowledgement: {0}")]
pub struct AckError(#[source] pub io::Error);

/// A record read back for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    pub seq: u64,
    pub frames: u32,
    pub logs: u32,
    /// Frames and logs at the record's start already settled by a replay stopped
    /// part-way ([`Spool::ack_part`]); the replay resumes after them.
    pub done: Counts,
    /// One encoded `ReportBoundaryLogsRequest`.
    pub payload: Bytes,
}

/// Where a live record is.
#[derive(Debug, Clone, Copy)]
struct Entry {
    segment: u64,
    offset: u64,
    header: Header,
}

impl Entry {
    /// The record's bytes, read back from whichever of `segments` holds it and
    /// checked against its header; `None` when they no longer match (damaged, or
    /// cut short).
    fn read_intact(&self, segments: &VecDeque<Segment>) -> io::Result<Option<Vec<u8>>> {
        let seg = segments
            .iter()
            .find(|s| s.id == self.segment)
            .expect("an entry's segment stays open while it is held");
        match seg.read_at(self.offset, self.header.record_len()) {
            Ok(bytes) => Ok((record::decode_header(&bytes) == Some(self.header)
                && self.header.payload_matches(&bytes[HEADER_LEN..]))
            .then_some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// An open spool directory (locked for as long as this lives).
#[derive(Debug)]
pub struct Spool {
    config: SpoolConfig,
    _lock: DirLock,
    /// Device and inode of the directory locked, to tell when it was deleted or
    /// replaced ([`Spool::rebuild_if_lost`]).
    dir_id: (u64, u64),
    /// The records held are not all in files under the directory (it, or some of
    /// them, were deleted): [`Spool::rebuild_if_lost`] writes them again.
    files_lost: bool,
    /// Another process took the directory's lock after this one's lock file was
    /// deleted: nothing more is written or deleted there (appends are refused, the
    /// state is not saved) until the lock is this process's again.
    lock_lost: bool,
    /// Opening failed half-way: the state must not be saved on drop (it would
    /// describe a recovery that did not finish).
    failed_open: bool,
    /// Oldest first; the last one is appended to if `writable`.
    segments: VecDeque<Segment>,
    writable: bool,
    /// Records not yet acknowledged, oldest first.
    entries: VecDeque<Entry>,
    /// Position of the next record appended.
    next: Position,
    /// Sum of the segment files' lengths.
    disk_bytes: u64,
    held: Counts,
    /// Of the oldest record, the frames and logs at its start a replay stopped
    /// part-way settled ([`Self::ack_part`]). Included in `held`, not in [`Self::held`].
    head_done: Counts,
    /// Of records behind the oldest, the frames and logs a replay settled out of
    /// order (a replay sends one request a session, so a later record's may be
    /// settled first): all of a record's when it was acknowledged whole, which
    /// then leaves the spool once every record before it did. Kept in memory only:
    /// the state saves how far the spool was acknowledged in order, so after a
    /// restart these are sent again (at least once). Included in `held`, not in
    /// [`Self::held`] (`behind_total` is their sum).
    behind: BTreeMap<u64, Counts>,
    behind_total: Counts,
    /// The payloads of the oldest records as the last [`Self::peek`] and the
    /// [`Self::peek_next`] calls after it read and checked them, for their replay
    /// (oldest first): a rebuild writes these copies, which the replay is
    /// delivering, even if the records' bytes on disk went bad since.
    peeked: Vec<(u64, Bytes)>,
    /// Records found damaged while reading, not yet taken by the caller.
    corrupt: Counts,
    /// Stretches of the numbering between live records whose records were lost and
    /// counted, oldest first: saved with the state so that the next start does not
    /// count them again.
    gaps: Vec<Gap>,
    state_dirty: bool,
    dir_dirty: bool,
    last_sync: Instant,
    buf: Vec<u8>,
    /// Delivered segments whose file could not be deleted (EPERM, say), with their
    /// bytes: still counted in `disk_bytes` (they still take the disk, within
    /// `max_bytes`), deleted again at every tick.
    undeleted: Vec<(PathBuf, u64)>,
}

impl Spool {
    /// Opens (creating if needed) and locks `config.dir`, and recovers what is in it:
    /// damaged stretches are skipped and counted, torn tails truncated.
    pub fn open(config: SpoolConfig) -> Result<(Spool, Recovery), SpoolError> {
        let dir = config.dir.clone();
        let shown = dir.display().to_string();
        let lock = make_and_lock(&dir)?;
        let io = |source| SpoolError::Io {
            dir: shown.clone(),
            source,
        };
        let dir_id = dir_id(&dir).map_err(io)?;
        let mut spool = Spool {
            config,
            _lock: lock,
            dir_id,
            files_lost: false,
            lock_lost: false,
            failed_open: false,
            segments: VecDeque::new(),
            writable: false,
            entries: VecDeque::new(),
            next: Position::default(),
            disk_bytes: 0,
            held: Counts::default(),
            head_done: Counts::default(),
            behind: BTreeMap::new(),
            behind_total: Counts::default(),
            peeked: Vec::new(),
            corrupt: Counts::default(),
            gaps: Vec::new(),
            state_dirty: false,
            dir_dirty: false,
            last_sync: Instant::now(),
            buf: Vec::new(),
            undeleted: Vec::new(),
        };
        match spool.recover() {
            Ok(recovery) => Ok((spool, recovery)),
            Err(error) => {
                spool.failed_open = true;
                Err(io(error))
            }
        }
    }

    fn recover(&mut self) -> io::Result<Recovery> {
        let dir = self.config.dir.clone();
        let mut recovery = Recovery::default();
        let saved = match state::load(&dir)? {
            Loaded::Ok(state) => Some(state),
            Loaded::Missing => None,
            Loaded::Damaged => {
                recovery.state_damaged = true;
                None
            }
        };
        let segments = segment::list(&dir)?;
        // Where the next live record should start. Without a state file, unknown
        // until a header says: the first segment's when it is the spool's very first
        // (record 0 starts at frame 0 and log 0), else the first header that checks,
        // a damaged record's included.
        let mut cursor: Option<Position> = match &saved {
            Some(s) => Some(s.acked),
            None => segments
                .first()
                .filter(|(id, _)| *id == 0)
                .map(|_| Position::default()),
        };
        let acked_seq = saved.as_ref().map_or(0, |s| s.acked.seq);
        let counted = saved.as_ref().map_or(&[][..], |s| &s.gaps[..]);
        // The furthest position any header vouches for (torn tails included).
        let mut end: Option<Position> = saved.as_ref().map(|s| s.appended);
        // Segments with no record to replay: deleted once the state is saved.
        let mut useless = Vec::new();
        for (id, path) in segments {
            let mut seg = Segment::open(id, path)?;
            let bytes = seg.read_all()?;
            let scan = record::scan(&bytes);
            recovery.damaged_bytes += scan
                .damaged
                .iter()
                .map(|r| (r.end - r.start) as u64)
                .sum::<u64>();
            if cursor.is_none() {
                // The segment's first header that checks, a damaged record's included.
                cursor = (scan.records.iter().map(|(_, h)| h.at))
                    .chain(scan.broken.iter().map(|b| b.at))
                    .min_by_key(|at| at.seq);
            }
            for (offset, header) in scan.records {
                if header.at.seq < acked_seq {
                    continue;
                }
                if let Some(c) = cursor {
                    if header.at.seq < c.seq {
                        // Numbered behind what was already read (a file put back by
                        // hand): not replayable in order; counted at each start until
                        // the replay passes its number.
                        recovery
                            .corrupt
                            .add(header.frames.into(), header.logs.into());
                        continue;
                    }
                    if header.at.seq > c.seq {
                        // Lost between two live records: its bytes stay where they
                        // are; the gap is saved with the state, so that the next
                        // start counts only what was not counted before.
                        let lost = uncounted(c, header.at, counted);
                        recovery.corrupt.add(lost.frames, lost.logs);
                        self.gaps.push(Gap {
                            from: c,
                            to: header.at,
                        });
                    }
                }
                cursor = Some(header.next());
                let mut done = Counts::default();
                if self.entries.is_empty() {
                    // The oldest record: a replay may have settled its start.
                    done = saved
                        .as_ref()
                        .map_or(done, |s| Counts::settled_in(s.acked, &header));
                    self.head_done = done;
                }
                let rest = Counts::rest_of(&header, done);
                recovery.intact.add(rest.frames, rest.logs);
                self.entries.push_back(Entry {
                    segment: id,
                    offset: offset as u64,
                    header,
                });
            }
            for broken in scan.broken {
                end = Some(furthest(end, broken.next()));
            }
            let has_live = self.entries.back().is_some_and(|e| e.segment == id);
            if (scan.valid_end as u64) < seg.len {
                recovery.truncated_bytes += seg.len - scan.valid_end as u64;
                seg.truncate(scan.valid_end as u64)?;
            }
            if has_live {
                self.disk_bytes += seg.len;
                self.segments.push_back(seg);
            } else {
                useless.push(seg);
            }
        }
        // What was written after the last intact record and did not survive.
        if let (Some(c), Some(e)) = (cursor, end) {
            let lost = uncounted(c, e, counted);
            recovery.corrupt.add(lost.frames, lost.logs);
        }
        // Numbers of records lost at the tail are reused: their bytes are gone
        // (truncated).
        self.next = cursor.or(end).unwrap_or_default();
        self.held = recovery.intact;
        self.held.add(self.head_done.frames, self.head_done.logs);
        let saved = self.save_state();
        for seg in useless {
            seg.remove()?;
        }
        // A full disk must not keep the proxy from starting (a restart loop under a
        // supervisor): with the room the useless segments freed, or at a later tick.
        if saved.is_err() && self.save_state().is_err() {
            self.state_dirty = true;
            recovery.state_unsaved = true;
        }
        state::sync_dir(&self.config.dir)?;
        Ok(recovery)
    }

    /// The directory this spool owns.
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// When the directory, its lock file or segment files holding records were
    /// deleted (a tmp cleaner, an operator) or the directory replaced while the spool
    /// ran, the records held live on only in open files, and a restart or a crash
    /// would lose them without a count. This makes the directory again (0700) and
    /// takes its lock if it is not the one locked, removes the segment files found
    /// in it (copies put back, or survivors of a partial clean-up), and writes every
    /// record held into new segments there under the same numbers (so a replay in
    /// flight still acknowledges its record). A directory moved away is left alone.
    /// Returns how many records were written, `None` when nothing was lost. On an
    /// error nothing held is lost: it is still served from the open files, and the
    /// next call tries again.
    pub fn rebuild_if_lost(&mut self) -> Result<Option<usize>, SpoolError> {
        let dir = self.config.dir.clone();
        let shown = dir.display().to_string();
        let io = |source| SpoolError::Io {
            dir: shown.clone(),
            source,
        };
        let moved = !dir_id(&dir).is_ok_and(|id| id == self.dir_id);
        if !moved && !self.lock_lost && self._lock.is_unlinked() {
            // The same directory, still locked by this process: only the lock file
            // is made again.
            if let Err(source) = self._lock.renew(&dir) {
                // Another process locked the new lock file (one that does not lock
                // the directory itself, an older proxy): as for a lost lock below.
                self.lock_lost |= matches!(source, LockError::Held { .. });
                return Err(match source {
                    LockError::Held { .. } => SpoolError::Locked {
                        dir: shown.clone(),
                        source,
                    },
                    LockError::Io { source, .. } => io(source),
                });
            }
        }
        if moved || self.lock_lost {
            match make_and_lock(&dir) {
                Ok(lock) => {
                    // Its id before it replaces the lock: a failure here leaves the
                    // old lock, and the next call takes the new one again.
                    let id = dir_id(&dir).map_err(io)?;
                    (self._lock, self.dir_id, self.lock_lost) = (lock, id, false);
                }
                Err(error) => {
                    self.lock_lost |= matches!(error, SpoolError::Locked { .. });
                    return Err(error);
                }
            }
        }
        if moved || self.segments.iter().any(Segment::is_unlinked) {
            self.files_lost = true;
        }
        if !self.files_lost {
            if !dir.join(state::FILE_NAME).exists() {
                // The state file alone was deleted: saved again at the next tick.
                self.state_dirty = true;
            }
            return Ok(None);
        }
        // Whatever segment files are there are not the ones held: out of the way.
        for (_, path) in segment::list(&dir).map_err(io)? {
            std::fs::remove_file(path).map_err(io)?;
        }
        let old = (
            std::mem::take(&mut self.segments),
            std::mem::take(&mut self.entries),
            self.writable,
            self.next,
            self.disk_bytes,
            self.held,
        );
        let (old_segments, old_entries, ..) = &old;
        if let Some(first) = old_entries.front() {
            self.next = first.header.at;
        }
        self.writable = false;
        self.disk_bytes = 0;
        self.held = Counts::default();
        let mut damaged = Counts::default();
        let head_done = std::mem::take(&mut self.head_done);
        let gaps = self.gaps.clone();
        let behind = (self.behind.clone(), self.behind_total);
        let copied = old_entries.iter().enumerate().try_for_each(|(i, entry)| {
            let h = entry.header;
            let done = if i == 0 { head_done } else { Counts::default() };
            // Every record keeps its number (a replay in flight acknowledges the right
            // one; gaps an earlier rebuild left stay gaps).
            self.next = h.at;
            // The record being replayed is written from the copy its replay read and
            // checked: it is being delivered, so it is not lost even if its bytes on
            // disk went bad since. Any other record is checked as a read for replay
            // is: a damaged one is counted, not given a fresh checksum, and its number
            // left out, a gap saved with the state so that no start counts it again.
            let replayed = self
                .peeked
                .iter()
                .find(|(seq, _)| *seq == h.at.seq)
                .map(|(_, payload)| payload.clone());
            let read = match replayed {
                Some(payload) => Some(payload),
                None => entry
                    .read_intact(old_segments)?
                    .map(|bytes| Bytes::from(bytes).slice(HEADER_LEN..)),
            };
            match read {
                Some(payload) => {
                    self.write(h.frames, h.logs, &payload)?;
                    if i == 0 {
                        self.head_done = done;
                    }
                    Ok(())
                }
                None => {
                    let done = self.forget_behind(h.at.seq).unwrap_or(done);
                    let lost = Counts::rest_of(&h, done);
                    damaged.add(lost.frames, lost.logs);
                    self.gaps.push(Gap {
                        from: h.at,
                        to: h.next(),
                    });
                    self.next = h.next();
                    Ok(())
                }
            }
        });
        let done = copied.and_then(|()| {
            self.dir_dirty = true;
            self.sync()?;
            self.save_state()
        });
        if let Err(error) = done {
            for seg in std::mem::take(&mut self.segments) {
                let _ = seg.remove();
            }
            (
                self.segments,
                self.entries,
                self.writable,
                self.next,
                self.disk_bytes,
                self.held,
            ) = old;
            self.head_done = head_done;
            self.gaps = gaps;
            (self.behind, self.behind_total) = behind;
            return Err(io(error));
        }
        debug_assert_eq!(self.next, old.3);
        // Counted before anything below can fail: the damaged records' gap is saved.
        self.corrupt.add(damaged.frames, damaged.logs);
        self.files_lost = false;
        // The oldest record left out (damaged): the next one's settled part, if a
        // replay settled it out of order, is now the oldest's. The rebuild is done
        // either way; a failure here is only a segment not yet retired.
        if self.settle_front() {
            self.pop_front().map_err(io)?;
        }
        Ok(Some(old_entries.len()))
    }

    /// At stop, after the last [`Self::rebuild_if_lost`] failed: when every record
    /// held is in a segment file deleted from the directory, they live only in this
    /// process's open files and end with it. Gives every record held up (they count
    /// as acknowledged, and the state says so where it can still be saved, so that a
    /// restart does not count them again) and returns what was held; `None` while a
    /// record is still in a file on disk (the next start replays those and counts the
    /// others as `spool_corrupt`).
    pub fn abandon_if_unreachable(&mut self) -> Option<Counts> {
        let (first, last) = (self.entries.front()?.segment, self.entries.back()?.segment);
        // Only when none is left on disk (a failed rebuild removes what it finds):
        // records still in a file are replayed by the next start, which counts the
        // others as `spool_corrupt`.
        let unreachable = self
            .segments
            .iter()
            .filter(|seg| (first..=last).contains(&seg.id))
            .all(Segment::is_unlinked);
        if !unreachable {
            return None;
        }
        let held = self.held();
        self.entries.clear();
        (self.held, self.head_done) = (Counts::default(), Counts::default());
        (self.behind, self.behind_total) = (BTreeMap::new(), Counts::default());
        self.peeked.clear();
        self.state_dirty = true;
        // Best effort: the directory or its lock is gone, or the save fails as the
        // rebuild did. A restart then finds no state, or the last one saved, and may
        // count these records again as `spool_corrupt` (over-reported, never hidden).
        let _ = self.save_state();
        Some(held)
    }

    /// Frames and logs held (appended, not yet acknowledged), less what a replay
    /// stopped part-way settled of the oldest record.
    pub fn held(&self) -> Counts {
        Counts {
            frames: self.held.frames - self.head_done.frames - self.behind_total.frames,
            logs: self.held.logs - self.head_done.logs - self.behind_total.logs,
        }
    }

    /// Records held.
    pub fn records(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the segment files take on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// `max_bytes`.
    pub fn max_bytes(&self) -> u64 {
        self.config.max_bytes
    }

    /// The sync policy.
    pub fn fsync(&self) -> Fsync {
        self.config.fsync
    }

    /// Appends one request of `frames` frames and `logs` logs. Durable on return
    /// with [`Fsync::Always`], within [`SYNC_INTERVAL`] with [`Fsync::Interval`].
    pub fn append(&mut self, frames: u32, logs: u32, payload: &[u8]) -> Result<(), AppendError> {
        self.append_unsynced(frames, logs, payload)?;
        if self.config.fsync == Fsync::Always {
            self.sync()?;
        }
        Ok(())
    }

    /// [`Self::append`] without the sync `Fsync::Always` asks for: for a batch of
    /// records made durable together by one [`Self::sync`] before any of them is
    /// reported as spooled.
    pub fn append_unsynced(
        &mut self,
        frames: u32,
        logs: u32,
        payload: &[u8],
    ) -> Result<(), AppendError> {
        let len = (HEADER_LEN + payload.len()) as u64;
        if payload.len() > record::MAX_PAYLOAD_LEN as usize
            || self.disk_bytes + len > self.config.max_bytes
        {
            return Err(AppendError::Full);
        }
        self.write(frames, logs, payload)?;
        Ok(())
    }

    /// Writes one record at the end, starting a segment if needed.
    fn write(&mut self, frames: u32, logs: u32, payload: &[u8]) -> io::Result<()> {
        self.check_lock()?;
        let len = (HEADER_LEN + payload.len()) as u64;
        let rotate = match self.segments.back() {
            Some(seg) if self.writable => seg.len >= self.config.segment_bytes,
            _ => true,
        };
        if rotate {
            if let Some(seg) = self.segments.back_mut().filter(|_| self.writable) {
                seg.sync()?;
            }
            self.segments
                .push_back(Segment::create(&self.config.dir, self.next.seq)?);
            self.writable = true;
            self.dir_dirty = true;
        }
        self.buf.clear();
        record::encode(self.next, frames, logs, payload, &mut self.buf);
        let seg = self.segments.back_mut().expect("a writable segment");
        let offset = seg.append(&self.buf)?;
        let header = record::decode_header(&self.buf).expect("just encoded");
        self.entries.push_back(Entry {
            segment: seg.id,
            offset,
            header,
        });
        self.next = header.next();
        self.disk_bytes += len;
        self.held.add(frames.into(), logs.into());
        self.state_dirty = true;
        Ok(())
    }

    /// The oldest record held, read back and checked. A record found damaged is
    /// dropped from the spool and added to [`Self::take_corrupt`]'s count.
    pub fn peek(&mut self) -> io::Result<Option<Spooled>> {
        while let Some(entry) = self.entries.front().copied() {
            let header = entry.header;
            if let Some(bytes) = entry.read_intact(&self.segments)? {
                let payload = Bytes::from(bytes).slice(HEADER_LEN..);
                self.peeked = vec![(header.at.seq, payload.clone())];
                return Ok(Some(Spooled {
                    seq: header.at.seq,
                    frames: header.frames,
                    logs: header.logs,
                    done: self.head_done,
                    payload,
                }));
            }
            let lost = Counts::rest_of(&header, self.head_done);
            self.corrupt.add(lost.frames, lost.logs);
            self.pop_front()?;
        }
        Ok(None)
    }

    /// After [`Self::peek`], the record after the last one it or this returned (past
    /// those acknowledged out of order), read back and checked, for a replay that
    /// sends several records at once (none acknowledged meanwhile), with what an
    /// earlier replay settled of it. `None` at the end, or when that record could
    /// not be read or is damaged: the replay stops before it, and the `peek` that
    /// finds it oldest deals with it.
    pub fn peek_next(&mut self) -> Option<Spooled> {
        let front = self.entries.front()?.header.at.seq;
        let last = self.peeked.last().map(|(seq, _)| *seq)?;
        if self.peeked.first().map(|(seq, _)| *seq) != Some(front) {
            return None;
        }
        // The record after the last one read, past those settled whole out of order.
        let entry = *self
            .entries
            .iter()
            .skip_while(|e| e.header.at.seq <= last)
            .find(|e| {
                self.behind
                    .get(&e.header.at.seq)
                    .is_none_or(|d| d.logs < u64::from(e.header.logs))
            })?;
        let bytes = entry.read_intact(&self.segments).ok()??;
        let payload = Bytes::from(bytes).slice(HEADER_LEN..);
        let header = entry.header;
        self.peeked.push((header.at.seq, payload.clone()));
        Some(Spooled {
            seq: header.at.seq,
            frames: header.frames,
            logs: header.logs,
            done: self.behind.get(&header.at.seq).copied().unwrap_or_default(),
            payload,
        })
    }

    /// Forgets the record the last [`Self::peek_next`] returned: the replay does not
    /// carry it.
    pub fn unpeek_last(&mut self) {
        if self.peeked.len() > 1 {
            self.peeked.pop();
        }
    }

    /// Frames and logs of records found damaged by [`Self::peek`] since the last call.
    pub fn take_corrupt(&mut self) -> Counts {
        std::mem::take(&mut self.corrupt)
    }

    /// The destination acknowledged (or refused for good) record `seq`: the oldest
    /// leaves the spool. Returns false if `seq` is not held; an [`AckError`] when
    /// it left but the files could not be updated.
    ///
    /// A record behind the oldest (`seq` any record held) is acknowledged out of
    /// order: it leaves the spool's counts at once, and the spool once every record
    /// before it did.
    pub fn ack(&mut self, seq: u64) -> Result<bool, AckError> {
        match self.entries.iter().position(|e| e.header.at.seq == seq) {
            Some(0) => {
                self.pop_front().map_err(AckError)?;
                Ok(true)
            }
            Some(i) => {
                let h = self.entries[i].header;
                self.set_behind(seq, Counts::rest_of(&h, Counts::default()));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// A replay of record `seq` was stopped after settling (delivering, or dropping
    /// for good) its first `done` frames and logs: the next replay resumes after
    /// them, for the oldest record in this process or after a restart (the state
    /// saved at the next tick or stop records it). Returns false if `seq` is not
    /// held or `done` does not fit inside it (nothing changes).
    ///
    /// For a record behind the oldest (`seq` any record held), kept in memory only
    /// (see `behind`): after a restart it is sent whole again.
    pub fn ack_part(&mut self, seq: u64, done: Counts) -> bool {
        let Some(i) = self.entries.iter().position(|e| e.header.at.seq == seq) else {
            return false;
        };
        let h = self.entries[i].header;
        let before = if i == 0 {
            self.head_done
        } else {
            self.behind.get(&seq).copied().unwrap_or_default()
        };
        let fits = done.logs < u64::from(h.logs)
            && done.frames <= u64::from(h.frames)
            && done.logs >= before.logs
            && done.frames >= before.frames;
        if fits && i == 0 {
            self.head_done = done;
            self.state_dirty = true;
        } else if fits {
            self.set_behind(seq, done);
        }
        fits
    }

    /// Sets what was settled of record `seq`, behind the oldest.
    fn set_behind(&mut self, seq: u64, done: Counts) {
        let before = self.behind.insert(seq, done).unwrap_or_default();
        self.behind_total.frames += done.frames - before.frames;
        self.behind_total.logs += done.logs - before.logs;
    }

    /// Removes record `seq`'s out-of-order settlement, returning it.
    fn forget_behind(&mut self, seq: u64) -> Option<Counts> {
        let done = self.behind.remove(&seq)?;
        self.behind_total.frames -= done.frames;
        self.behind_total.logs -= done.logs;
        Some(done)
    }

    /// Removes the oldest record, then every record after it acknowledged out of
    /// order; what was settled of the next one becomes its `head_done`.
    fn pop_front(&mut self) -> io::Result<()> {
        loop {
            self.head_done = Counts::default();
            let Some(entry) = self.entries.pop_front() else {
                break;
            };
            let h = entry.header;
            // Settled out of order and made the oldest by a rebuild that left out a
            // damaged record before it: not counted twice.
            self.forget_behind(h.at.seq);
            self.peeked.retain(|(seq, _)| *seq != h.at.seq);
            self.held.frames -= u64::from(h.frames);
            self.held.logs -= u64::from(h.logs);
            self.state_dirty = true;
            if !self.settle_front() {
                break;
            }
        }
        self.retire_segments()
    }

    /// Moves what a replay settled out of order of the oldest record into
    /// `head_done`; true when it was settled whole (the caller then removes it).
    fn settle_front(&mut self) -> bool {
        let Some(front) = self.entries.front().map(|e| e.header) else {
            return false;
        };
        let Some(done) = self.forget_behind(front.at.seq) else {
            return false;
        };
        if done.logs < u64::from(front.logs) {
            self.head_done = done;
            self.state_dirty = true;
            return false;
        }
        true
    }

    /// The first record not yet acknowledged.
    fn acked(&self) -> Position {
        self.entries.front().map_or(self.next, |e| Position {
            frame: e.header.at.frame + self.head_done.frames,
            log: e.header.at.log + self.head_done.logs,
            ..e.header.at
        })
    }

    /// Deletes segments that hold no record still needed, saving the state first so
    /// that a crash cannot make their records look lost.
    ///
    /// When the state cannot be saved (a full disk refuses its file's new block) they
    /// are deleted all the same, since they are what fills the disk, and the state is
    /// saved again with the room that frees. If the process stops before a save
    /// succeeds, the next start finds those delivered records gone and counts them as
    /// damaged (`spool_corrupt`): loss over-reported, nothing sent twice.
    fn retire_segments(&mut self) -> io::Result<()> {
        self.check_lock()?;
        let keep_from = self.entries.front().map(|e| e.segment);
        let retire = |seg: &Segment| keep_from.is_none_or(|id| seg.id < id);
        if !self.segments.front().is_some_and(retire) {
            return Ok(());
        }
        let saved = self.save_state();
        let mut removed = Ok(());
        while self.segments.front().is_some_and(retire) {
            let seg = self.segments.pop_front().expect("checked");
            let (path, len) = (seg.path.clone(), seg.len);
            match seg.remove() {
                Ok(()) => self.disk_bytes -= len,
                Err(error) => {
                    self.undeleted.push((path, len));
                    removed = Err(error);
                }
            }
            if self.segments.is_empty() {
                self.writable = false;
            }
        }
        if saved.is_err() {
            self.save_state()?;
        }
        removed?;
        state::sync_dir(&self.config.dir)
    }

    /// Deletes again the delivered segments whose file could not be deleted.
    fn delete_undeleted(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        let mut bytes = self.disk_bytes;
        self.undeleted
            .retain(|(path, len)| match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    result = Err(e);
                    true
                }
                _ => {
                    bytes -= len;
                    false
                }
            });
        self.disk_bytes = bytes;
        result
    }

    /// An error while another process holds the directory's lock.
    fn check_lock(&self) -> io::Result<()> {
        if self.lock_lost {
            return Err(io::Error::other(
                "another process took the spool directory's lock after its lock file was deleted",
            ));
        }
        Ok(())
    }

    fn save_state(&mut self) -> io::Result<()> {
        self.check_lock()?;
        let acked = self.acked();
        // A gap the replay has passed is never looked at again; oldest first (a
        // rebuild's come after recovery's, whatever their numbers).
        self.gaps.retain(|g| g.to.seq > acked.seq);
        self.gaps.sort_unstable_by_key(|g| g.from.seq);
        state::save(
            &self.config.dir,
            &State {
                acked,
                appended: self.next,
                gaps: self.gaps.clone(),
            },
        )?;
        self.state_dirty = false;
        Ok(())
    }

    /// Makes everything appended and acknowledged so far durable.
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some(seg) = self.segments.back_mut().filter(|_| self.writable) {
            seg.sync()?;
        }
        if self.dir_dirty {
            state::sync_dir(&self.config.dir)?;
            self.dir_dirty = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// True while something written or acknowledged, or a file to delete, waits for
    /// [`Self::tick`].
    pub fn is_dirty(&self) -> bool {
        self.state_dirty
            || self.dir_dirty
            || !self.undeleted.is_empty()
            || (self.writable && self.segments.back().is_some_and(Segment::is_dirty))
    }

    /// Called at least every [`SYNC_INTERVAL`] / 2 while the spool is in use: syncs
    /// appended data, and saves how far records were acknowledged, at most once
    /// per interval.
    pub fn tick(&mut self, now: Instant) -> io::Result<()> {
        if !self.undeleted.is_empty() {
            self.delete_undeleted()?;
        }
        if self.is_dirty() && now.duration_since(self.last_sync) >= SYNC_INTERVAL / 2 {
            self.sync()?;
            if self.state_dirty {
                self.save_state()?;
            }
        }
        Ok(())
    }

    /// Syncs everything and saves the state (also done, best effort, on drop).
    pub fn close(mut self) -> io::Result<()> {
        self.flush()
    }

    /// Syncs everything and saves the state now.
    pub fn flush(&mut self) -> io::Result<()> {
        self.sync()?;
        self.save_state()
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.failed_open {
            return;
        }
        if let Err(error) = self.flush() {
            tracing::error!(dir = %self.config.dir.display(), %error, "saving the spool's state");
        }
    }
}

/// Creates `dir` if needed and locks it for this process.
fn make_and_lock(dir: &Path) -> Result<DirLock, SpoolError> {
    let shown = || dir.display().to_string();
    // Audit logs: only the proxy's user may read them (0700 directory, 0600 files).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| SpoolError::Dir {
            dir: shown(),
            source,
        })?;
    DirLock::acquire(dir).map_err(|source| match source {
        LockError::Held { .. } => SpoolError::Locked {
            dir: shown(),
            source,
        },
        LockError::Io { source, .. } => SpoolError::Dir {
            dir: shown(),
            source,
        },
    })
}

/// Device and inode of a directory.
fn dir_id(dir: &Path) -> io::Result<(u64, u64)> {
    let meta = std::fs::metadata(dir)?;
    Ok((meta.dev(), meta.ino()))
}

/// The later of two positions (by record number).
/// The frames and logs numbered from `from` to `to` that none of the `counted` gaps
/// (disjoint) covers.
fn uncounted(from: Position, to: Position, counted: &[Gap]) -> Counts {
    let mut lost = Counts::between(from, to);
    for g in counted {
        let lo = if g.from.seq > from.seq { g.from } else { from };
        let hi = if g.to.seq < to.seq { g.to } else { to };
        let both = Counts::between(lo, hi);
        lost.frames -= both.frames.min(lost.frames);
        lost.logs -= both.logs.min(lost.logs);
    }
    lost
}

fn furthest(a: Option<Position>, b: Position) -> Position {
    match a {
        Some(a) if a.seq >= b.seq => a,
        _ => b,
    }
}

#[cfg(test)]
mod tests;
