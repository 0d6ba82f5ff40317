//! Sequence-gap detection: boundary numbers each session's logs from 0; a jump
//! forward means logs were lost before they reached the proxy.
//!
//! The table is bounded: sessions idle for the expiry are forgotten, and when it
//! is full the least recently seen session is evicted, both in O(1) per frame
//! (a recency list, not a scan of the table). A session the tracker does
//! not know (new, expired, or evicted) starts at the first number it shows, so a
//! proxy restart does not report the whole past as a gap. Sessions are keyed by a
//! keyed 64-bit hash of their id, so an entry costs the same few dozen bytes
//! whatever the length of the id a client sends.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use crate::codec::LogFrame;

/// Sessions tracked at most, by default.
pub const DEFAULT_MAX_SESSIONS: usize = 4096;
/// Idle time after which a session is forgotten, by default.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(600);
/// No entry: the end of the recency list.
const NIL: u32 = u32::MAX;

/// What one observation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeqFindings {
    /// Numbers skipped: logs that never arrived.
    pub missing: u64,
    /// Logs whose number was below the next expected one (repeated or late).
    pub out_of_order: u64,
}

/// A session's place in the table: a keyed 64-bit hash of its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionKey(u64);

/// One tracked session, linked into the recency list (newest first).
#[derive(Debug)]
struct Entry {
    key: u64,
    next: i32,
    seen: Instant,
    /// Neighbour seen more recently, or `NIL`.
    newer: u32,
    /// Neighbour seen less recently, or `NIL`.
    older: u32,
}

/// The table's keys are already keyed hashes: the map uses them as they are
/// instead of hashing them again.
#[derive(Debug, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; fold anything else in all the same.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Next expected sequence number per session.
///
/// Entries live in a slab, indexed by key, and are linked in the order they were
/// last seen, so finding, refreshing, expiring and evicting a session each cost
/// O(1) whatever the churn of session ids.
#[derive(Debug)]
pub struct SeqTracker {
    /// Slab index of each tracked session, by key.
    index: HashMap<u64, u32, BuildHasherDefault<KeyHasher>>,
    entries: Vec<Entry>,
    /// Slab slots no session uses.
    free: Vec<u32>,
    newest: u32,
    oldest: u32,
    /// Keys the session-id hash with this process's random keys, so ids that
    /// collide cannot be chosen from outside.
    ids: RandomState,
    max_sessions: usize,
    expiry: Duration,
}

impl Default for SeqTracker {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SESSIONS, DEFAULT_EXPIRY)
    }
}

impl SeqTracker {
    /// A tracker holding at most `max_sessions` (>= 1), forgetting sessions idle for `expiry`.
    pub fn new(max_sessions: usize, expiry: Duration) -> Self {
        Self {
            index: HashMap::default(),
            entries: Vec::new(),
            free: Vec::new(),
            newest: NIL,
            oldest: NIL,
            ids: RandomState::new(),
            max_sessions: max_sessions.clamp(1, NIL as usize - 1),
            expiry,
        }
    }

    /// Sessions currently tracked.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when no session is tracked.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The key of a session id (its bytes, as `LogFrame::request_key` gives them).
    pub fn key(&self, session_id: &[u8]) -> SessionKey {
        SessionKey(self.ids.hash_one(session_id))
    }

    /// Accounts one frame's logs, at `now`.
    pub fn observe(&mut self, frame: &LogFrame, now: Instant) -> SeqFindings {
        if frame.log_count() == 0 {
            return SeqFindings::default();
        }
        let key = self.key(frame.request_key().0);
        self.observe_as(key, frame, now)
    }

    /// Accounts one frame's logs, at `now`, for the session of `key` (which must be
    /// this tracker's key of the frame's session id).
    pub fn observe_as(&mut self, key: SessionKey, frame: &LogFrame, now: Instant) -> SeqFindings {
        if frame.log_count() == 0 {
            return SeqFindings::default();
        }
        self.expire(now);
        let summary = frame.seq();
        let first = summary.first;
        let slot = match self.index.get(&key.0) {
            Some(&slot) => {
                if slot != self.newest {
                    self.unlink(slot);
                    self.link_newest(slot);
                }
                let entry = &mut self.entries[slot as usize];
                // Idle for the expiry but not expired yet (the recency list is only
                // looked at from its old end): forgotten all the same.
                if now.saturating_duration_since(entry.seen) >= self.expiry {
                    entry.next = first;
                }
                slot
            }
            None => {
                if self.index.len() >= self.max_sessions {
                    self.remove(self.oldest);
                }
                let slot = self.insert(key.0, first, now);
                self.link_newest(slot);
                slot
            }
        };
        let session = &mut self.entries[slot as usize];
        session.seen = now;
        let mut findings = SeqFindings::default();
        if summary.contiguous {
            let expected = session.next;
            step(&mut session.next, summary.first, &mut findings);
            if first.wrapping_sub(expected) >= 0 {
                // In order from the first log on: the rest of the run follows it (a
                // contiguous run never wraps inside).
                session.next = summary.last.wrapping_add(1);
            } else {
                // The run started below the expected number: judge each later log
                // (none when the run is one log long).
                if let Some(second) = first.checked_add(1) {
                    for n in second..=summary.last {
                        step(&mut session.next, n, &mut findings);
                    }
                }
            }
        } else {
            for n in frame.sequence_numbers() {
                step(&mut session.next, n, &mut findings);
            }
        }
        findings
    }

    /// Forgets the sessions idle for the expiry, oldest first: each is removed
    /// once, so this costs O(1) per frame amortised.
    fn expire(&mut self, now: Instant) {
        while self.oldest != NIL {
            let seen = self.entries[self.oldest as usize].seen;
            if now.saturating_duration_since(seen) < self.expiry {
                return;
            }
            self.remove(self.oldest);
        }
    }

    fn insert(&mut self, key: u64, next: i32, now: Instant) -> u32 {
        let entry = Entry {
            key,
            next,
            seen: now,
            newer: NIL,
            older: NIL,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.entries[slot as usize] = entry;
                slot
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
        };
        self.index.insert(key, slot);
        slot
    }

    fn remove(&mut self, slot: u32) {
        if slot == NIL {
            return;
        }
        self.unlink(slot);
        self.index.remove(&self.entries[slot as usize].key);
        self.free.push(slot);
    }

    /// Takes `slot` out of the recency list.
    fn unlink(&mut self, slot: u32) {
        let (newer, older) = {
            let e = &self.entries[slot as usize];
            (e.newer, e.older)
        };
        match newer {
            NIL => self.newest = older,
            n => self.entries[n as usize].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            o => self.entries[o as usize].newer = newer,
        }
        let e = &mut self.entries[slot as usize];
        (e.newer, e.older) = (NIL, NIL);
    }

    /// Puts an unlinked `slot` at the newest end of the recency list.
    fn link_newest(&mut self, slot: u32) {
        let old_newest = self.newest;
        {
            let e = &mut self.entries[slot as usize];
            e.newer = NIL;
            e.older = old_newest;
        }
        match old_newest {
            NIL => self.oldest = slot,
            n => self.entries[n as usize].newer = slot,
        }
        self.newest = slot;
    }
}

/// Judges one number against the expected one.
///
/// Numbers are compared as int32 serial numbers (RFC 1982): after 2147483647 comes
/// -2147483648, as boundary's int32 counter wraps, and a number up to 2^31 - 1 ahead of
/// the expected one is ahead (the logs between are missing), one behind it is behind
/// (out of order).
fn step(next: &mut i32, n: i32, findings: &mut SeqFindings) {
    let ahead = n.wrapping_sub(*next);
    if ahead < 0 {
        findings.out_of_order += 1;
        return;
    }
    findings.missing += ahead as u64;
    *next = n.wrapping_add(1);
}
