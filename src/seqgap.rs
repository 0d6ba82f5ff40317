//! Sequence-gap detection: boundary numbers each session's logs from 0; a jump
//! forward means logs were lost before they reached the proxy.
//!
//! The table is bounded: sessions idle for the expiry are forgotten, and when it
//! is full the least recently seen session is evicted. A session the tracker does
//! not know (new, expired, or evicted) starts at the first number it shows, so a
//! proxy restart does not report the whole past as a gap. Sessions are keyed by a
//! keyed 64-bit hash of their id, so an entry costs the same few dozen bytes
//! whatever the length of the id a client sends.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use crate::codec::LogFrame;

/// Sessions tracked at most, by default.
pub const DEFAULT_MAX_SESSIONS: usize = 4096;
/// Idle time after which a session is forgotten, by default.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(600);

/// What one observation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeqFindings {
    /// Numbers skipped: logs that never arrived.
    pub missing: u64,
    /// Logs whose number was below the next expected one (repeated or late).
    pub out_of_order: u64,
}

#[derive(Debug)]
struct Session {
    next: i64,
    seen: Instant,
}

/// Next expected sequence number per session.
#[derive(Debug)]
pub struct SeqTracker {
    /// By the hash of the session id (see `key`).
    sessions: HashMap<u64, Session>,
    /// Keys the session-id hash with this process's random keys, so ids that
    /// collide cannot be chosen from outside.
    ids: RandomState,
    max_sessions: usize,
    expiry: Duration,
    last_sweep: Instant,
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
            sessions: HashMap::new(),
            ids: RandomState::new(),
            max_sessions: max_sessions.max(1),
            expiry,
            last_sweep: Instant::now(),
        }
    }

    /// Sessions currently tracked.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when no session is tracked.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Accounts one frame's logs, at `now`.
    pub fn observe(&mut self, frame: &LogFrame, now: Instant) -> SeqFindings {
        if frame.log_count() == 0 {
            return SeqFindings::default();
        }
        self.sweep(now);
        let summary = frame.seq();
        let key = self.ids.hash_one(frame.session_id());
        let fresh = Session {
            next: i64::from(summary.first),
            seen: now,
        };
        let expiry = self.expiry;
        let session = match self.sessions.get_mut(&key) {
            // Idle for the expiry but not swept yet (sweeps are rate-limited):
            // forgotten all the same.
            Some(session) if now.saturating_duration_since(session.seen) >= expiry => {
                *session = fresh;
                session
            }
            Some(session) => session,
            None => {
                self.make_room();
                self.sessions.entry(key).or_insert(fresh)
            }
        };
        session.seen = now;
        let mut findings = SeqFindings::default();
        if summary.contiguous {
            let expected = session.next;
            step(&mut session.next, summary.first, &mut findings);
            if i64::from(summary.first) >= expected {
                // In order from the first log on: the rest of the run follows it.
                session.next = i64::from(summary.last) + 1;
            } else {
                // The run started below the expected number: judge each later log
                // (none when the run is one log long).
                for n in (i64::from(summary.first) + 1)..=i64::from(summary.last) {
                    step(&mut session.next, n as i32, &mut findings);
                }
            }
        } else {
            for n in frame.sequence_numbers() {
                step(&mut session.next, n, &mut findings);
            }
        }
        findings
    }

    /// Forgets idle sessions, at most once per second of calls.
    fn sweep(&mut self, now: Instant) {
        if now.duration_since(self.last_sweep) < Duration::from_secs(1) {
            return;
        }
        self.last_sweep = now;
        let expiry = self.expiry;
        self.sessions
            .retain(|_, s| now.duration_since(s.seen) < expiry);
    }

    /// Evicts the least recently seen session when the table is full.
    fn make_room(&mut self) {
        if self.sessions.len() < self.max_sessions {
            return;
        }
        if let Some(oldest) = self
            .sessions
            .iter()
            .min_by_key(|(_, s)| s.seen)
            .map(|(&k, _)| k)
        {
            self.sessions.remove(&oldest);
        }
    }
}

/// Judges one number against the expected one.
fn step(next: &mut i64, n: i32, findings: &mut SeqFindings) {
    let n = i64::from(n);
    if n < *next {
        findings.out_of_order += 1;
        return;
    }
    findings.missing += (n - *next) as u64;
    *next = n + 1;
}
