//! Intake: what the reader does with a connection's bytes. Frames them, validates each
//! frame, records boundary's own drop reports and sequence gaps, and pushes log frames
//! into the ring, counting every frame it cannot keep.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::codec::{decode_message_noting_superseded, FrameDecoder, LogFrame, Message, RawFrame};
use crate::events::{
    BoundaryStatusReported, BufferFull, ConnectionClosed, ConnectionOpened, ConnectionRejected,
    EnvelopeVariantSuperseded, ForwardDropReason, ForwardDropped, FrameRejected, InternalEvent,
    LogsReceived, RingOccupancy, SequenceGap, SequenceOutOfOrder, WaitedForRoom,
};
use crate::metrics::{ConnectionRejectReason, FrameRejectReason, Metrics};
use crate::reader::{CloseCause, ConnInfo, ConnectionHandler, Peer, RejectReason};
use crate::ring::{Producer, PushError};
use crate::seqgap::{SeqTracker, SessionKey};

/// Largest drop count one `BoundaryStatus` may carry: 2^53, the largest integer a
/// Prometheus sample (a float64) holds exactly. boundary would have to drop 100 M
/// logs a second for almost three years to reach it, so a count over it (or a
/// negative one) is not a count: the frame is refused
/// (`frames_rejected_total{reason="bad_status"}`) and adds nothing.
pub const MAX_STATUS_COUNT: i64 = 1 << 53;

/// What travels through the ring: one validated log frame and the connection it came
/// from (the forwarder keeps each connection's order by it).
#[derive(Debug)]
pub struct QueuedFrame {
    pub frame: LogFrame,
    pub conn: u32,
    /// The run of frames of one connection with one session id and process name it
    /// belongs to: two frames with the same non-zero `key_run` have the same session
    /// id and process name, so the forwarder can group them without reading those
    /// bytes again (a cache miss each, on another core). Different runs may still
    /// share a key; 0 says nothing.
    pub key_run: u64,
}

/// How long the reader waits for room when a frame finds the ring full, by default.
pub const DEFAULT_RING_FULL_PATIENCE: Duration = Duration::from_millis(10);
/// While it waits, how often the reader looks at the ring again.
const ROOM_POLL: Duration = Duration::from_micros(50);

/// The reader's connection handler for the proxy.
pub struct Intake {
    producer: Producer<QueuedFrame>,
    metrics: Arc<Metrics>,
    sequences: Mutex<SeqTracker>,
    /// How long a frame that finds the ring full waits for room (see `wait_for_room`).
    patience: Duration,
    /// Set when a wait ended without room: frames finding the ring full are then
    /// dropped at once, until one finds room again.
    impatient: AtomicBool,
    /// The next `QueuedFrame::key_run` (from 1).
    next_key_run: AtomicU64,
}

/// Per-connection state: the incremental frame decoder.
#[derive(Debug)]
pub struct Connection {
    /// The reader's id of the connection (its debug lines'), also in the rejection lines.
    id: u64,
    decoder: FrameDecoder,
    /// The key run of this connection's last frame, and its session id and process name.
    key_run: KeyRun,
    /// Set once a fatal framing error was counted, so the close counts nothing more.
    failed: bool,
}

impl Intake {
    pub fn new(
        producer: Producer<QueuedFrame>,
        metrics: Arc<Metrics>,
        sequences: SeqTracker,
    ) -> Self {
        Self {
            producer,
            metrics,
            sequences: Mutex::new(sequences),
            patience: DEFAULT_RING_FULL_PATIENCE,
            impatient: AtomicBool::new(false),
            next_key_run: AtomicU64::new(1),
        }
    }

    /// Sets how long a frame that finds the ring full waits for room.
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// The ring is full. While the forwarder is behind only for a moment (not
    /// scheduled yet on busy cores, or between drain passes), the reader waits for
    /// room instead of dropping: it reads nothing meanwhile, so the writers meet
    /// socket back-pressure, and its core is free for the forwarder. After
    /// `patience` without room (the destination is slow or down, and the forwarder
    /// waits for it), the frame is dropped as `buffer_full`, and later frames that
    /// find the ring full are dropped at once until one finds room again: a stuck
    /// destination costs the reader one wait per episode, not one per frame.
    fn wait_for_room(&self) {
        if self.impatient.load(Ordering::Relaxed) || self.patience.is_zero() {
            return;
        }
        let started = Instant::now();
        let room = loop {
            if self.producer.len() < self.producer.capacity() || self.producer.is_closed() {
                break true;
            }
            if started.elapsed() >= self.patience {
                self.impatient.store(true, Ordering::Relaxed);
                break false;
            }
            std::thread::sleep(ROOM_POLL);
        };
        WaitedForRoom {
            waited: started.elapsed(),
            room,
        }
        .emit(&self.metrics);
    }

    /// Handles one complete frame: frame-local errors are counted and skipped.
    fn frame<'a>(&'a self, read: &mut Read<'a>, raw: RawFrame) {
        let decoded = decode_message_noting_superseded(raw).map(|(message, superseded)| {
            if !superseded.is_empty() {
                EnvelopeVariantSuperseded {
                    conn: read.conn,
                    superseded,
                }
                .emit(&self.metrics);
            }
            message
        });
        match decoded {
            Ok(Message::Logs(frame)) => self.logs(read, frame),
            Ok(Message::Status(status)) => {
                let count = |n: i64| {
                    u64::try_from(n)
                        .ok()
                        .filter(|&n| n <= MAX_STATUS_COUNT as u64)
                };
                match (
                    count(status.dropped_channel_full),
                    count(status.dropped_batch_full),
                ) {
                    (Some(channel_full), Some(batch_full)) => BoundaryStatusReported {
                        channel_full,
                        batch_full,
                    }
                    .emit(&self.metrics),
                    _ => FrameRejected {
                        reason: FrameRejectReason::BadStatus,
                        conn: read.conn,
                        error: None,
                    }
                    .emit(&self.metrics),
                }
            }
            Err(error) => FrameRejected::of(&error, read.conn).emit(&self.metrics),
        }
    }

    fn logs<'a>(&'a self, read: &mut Read<'a>, frame: LogFrame) {
        let logs = frame.log_count();
        if logs == 0 {
            // Nothing to deliver: no ring slot, no call.
            FrameRejected {
                reason: FrameRejectReason::Empty,
                conn: read.conn,
                error: None,
            }
            .emit(&self.metrics);
            return;
        }
        LogsReceived {
            frames: 1,
            logs: u64::from(logs),
        }
        .emit(&self.metrics);
        let sequences = read.sequences.get_or_insert_with(|| {
            self.sequences
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        });
        let (session, process) = frame.request_key();
        let (key_run, key) = read
            .key_run
            .of(session, process, &self.next_key_run, sequences);
        let findings = sequences.observe_as(key, &frame, read.now);
        if findings.missing > 0 {
            SequenceGap {
                missing: findings.missing,
            }
            .emit(&self.metrics);
        }
        if findings.out_of_order > 0 {
            SequenceOutOfOrder {
                logs: findings.out_of_order,
            }
            .emit(&self.metrics);
        }
        if self.producer.len() >= self.producer.capacity() {
            self.wait_for_room();
        }
        match self.producer.push(
            QueuedFrame {
                frame,
                // Ids only need to tell live connections apart within one drain.
                conn: read.conn as u32,
                key_run,
            },
            logs,
        ) {
            Ok(()) => {
                if self.impatient.load(Ordering::Relaxed) {
                    self.impatient.store(false, Ordering::Relaxed);
                }
            }
            Err(PushError::Full(_)) => BufferFull {
                logs: u64::from(logs),
            }
            .emit(&self.metrics),
            Err(PushError::Closed(_)) => ForwardDropped {
                frames: 1,
                logs: u64::from(logs),
                reason: ForwardDropReason::Shutdown,
            }
            .emit(&self.metrics),
        }
    }
}

/// What the frames of one read share: the connection, one clock reading, and the
/// sequence tracker, locked at the first frame of logs and held to the read's end.
struct Read<'a> {
    conn: u64,
    now: Instant,
    key_run: &'a mut KeyRun,
    sequences: Option<MutexGuard<'a, SeqTracker>>,
}

/// One connection's current run of frames with the same session id and process name
/// (boundary writes one session per connection), and the sequence tracker's key of that
/// session id: both are worked out once a run, not once a frame.
#[derive(Debug, Default)]
struct KeyRun {
    /// 0 while there is no run to continue.
    run: u64,
    session: Vec<u8>,
    process: Vec<u8>,
    tracker_key: Option<SessionKey>,
}

/// Longest session id plus process name a run remembers; a frame with longer ones
/// starts a run of its own (and its session id is hashed again).
const KEY_RUN_MAX: usize = 256;

impl KeyRun {
    /// The run of a frame with this key and the tracker's key of its session id: the
    /// current run's if the key is the same as the last frame's, else a new run (from
    /// `next`) and key (from `tracker`).
    fn of(
        &mut self,
        session: &[u8],
        process: &[u8],
        next: &AtomicU64,
        tracker: &SeqTracker,
    ) -> (u64, SessionKey) {
        if let Some(key) = self.tracker_key {
            if self.session == session && self.process == process {
                return (self.run, key);
            }
        }
        let run = next.fetch_add(1, Ordering::Relaxed);
        let key = tracker.key(session);
        if session.len() + process.len() <= KEY_RUN_MAX {
            self.session.clear();
            self.session.extend_from_slice(session);
            self.process.clear();
            self.process.extend_from_slice(process);
            (self.run, self.tracker_key) = (run, Some(key));
        } else {
            (self.run, self.tracker_key) = (0, None);
        }
        (run, key)
    }
}

impl ConnectionHandler for Intake {
    type State = Connection;

    fn open(&self, info: &ConnInfo) -> Connection {
        ConnectionOpened.emit(&self.metrics);
        Connection {
            id: info.id,
            decoder: FrameDecoder::new(),
            key_run: KeyRun::default(),
            failed: false,
        }
    }

    fn data(&self, conn: &mut Connection, mut bytes: &[u8]) -> ControlFlow<()> {
        let mut frames = 0usize;
        // One clock reading per read: the frames of one read arrived together.
        let mut read = Read {
            conn: conn.id,
            now: Instant::now(),
            key_run: &mut conn.key_run,
            sequences: None,
        };
        let flow = loop {
            match conn.decoder.decode(&mut bytes) {
                Ok(Some(raw)) => {
                    frames += 1;
                    self.frame(&mut read, raw);
                }
                Ok(None) => break ControlFlow::Continue(()),
                Err(error) => {
                    conn.failed = true;
                    FrameRejected::of(&error, conn.id).emit(&self.metrics);
                    break ControlFlow::Break(());
                }
            }
        };
        drop(read);
        if frames > 0 {
            // Once per read, not per frame: the forwarder's drain thread also sets the
            // gauge, but it does not run while no forwarder does or while it waits
            // for coderd, exactly when the ring fills.
            RingOccupancy {
                len: self.producer.len(),
            }
            .emit(&self.metrics);
        }
        flow
    }

    fn closed(&self, conn: Connection, _cause: CloseCause) {
        if !conn.failed {
            if let Err(error) = conn.decoder.finish() {
                FrameRejected::of(&error, conn.id).emit(&self.metrics);
            }
        }
        ConnectionClosed.emit(&self.metrics);
    }

    fn rejected(&self, reason: RejectReason, peer: Peer) {
        let reason = match reason {
            RejectReason::Limit => ConnectionRejectReason::Limit,
            RejectReason::PeerUid => ConnectionRejectReason::PeerUid,
        };
        ConnectionRejected {
            reason,
            peer_uid: peer.uid,
            peer_pid: peer.pid,
        }
        .emit(&self.metrics);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_run_lasts_while_the_session_id_and_process_name_stay_the_same() {
        let next = AtomicU64::new(1);
        let tracker = SeqTracker::new(64, Duration::from_secs(60));
        let of = |run: &mut KeyRun, session: &[u8], process: &[u8]| {
            let (id, key) = run.of(session, process, &next, &tracker);
            assert_eq!(key, tracker.key(session), "the tracker's own key");
            id
        };
        let (mut a, mut b) = (KeyRun::default(), KeyRun::default());
        let first = of(&mut a, b"s1", b"codex");
        assert_ne!(first, 0);
        assert_eq!(of(&mut a, b"s1", b"codex"), first);
        let other_conn = of(&mut b, b"s1", b"codex");
        assert_ne!(other_conn, first, "runs are per connection");
        let process_changed = of(&mut a, b"s1", b"claude");
        assert_ne!(process_changed, first);
        let session_changed = of(&mut a, b"s2", b"claude");
        assert_ne!(session_changed, process_changed);
        let back = of(&mut a, b"s1", b"codex");
        assert!(
            ![first, process_changed, session_changed].contains(&back),
            "a key coming back is a new run"
        );
        // Keys too long to remember: every frame a run of its own.
        let long = vec![b'x'; KEY_RUN_MAX];
        let l1 = of(&mut a, &long, b"codex");
        let l2 = of(&mut a, &long, b"codex");
        assert!(l1 != l2 && l1 != 0 && l2 != 0);
    }
}
