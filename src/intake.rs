//! Intake: what the reader does with a connection's bytes. Frames them, validates each
//! frame, records boundary's own drop reports and sequence gaps, and pushes log frames
//! into the ring, counting every frame it cannot keep.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::codec::{decode_message, FrameDecoder, LogFrame, Message, RawFrame};
use crate::events::{
    BoundaryStatusReported, BufferFull, ConnectionClosed, ConnectionOpened, ConnectionRejected,
    ForwardDropReason, ForwardDropped, FrameRejected, InternalEvent, LogsReceived, RingOccupancy,
    SequenceGap, SequenceOutOfOrder, WaitedForRoom,
};
use crate::metrics::{ConnectionRejectReason, FrameRejectReason, Metrics};
use crate::reader::{CloseCause, ConnInfo, ConnectionHandler, RejectReason};
use crate::ring::{Producer, PushError};
use crate::seqgap::{KeyCache, SeqTracker};

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
}

/// Per-connection state: the incremental frame decoder.
#[derive(Debug)]
pub struct Connection {
    id: u32,
    decoder: FrameDecoder,
    /// The sequence tracker's key of this connection's session id.
    session: KeyCache,
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
        match decode_message(raw) {
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
                    }
                    .emit(&self.metrics),
                }
            }
            Err(error) => FrameRejected::from(&error).emit(&self.metrics),
        }
    }

    fn logs<'a>(&'a self, read: &mut Read<'a>, frame: LogFrame) {
        let logs = frame.log_count();
        if logs == 0 {
            // Nothing to deliver: no ring slot, no call.
            FrameRejected {
                reason: FrameRejectReason::Empty,
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
        let key = read.session.key(sequences, frame.request_key().0);
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
                conn: read.conn,
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
    conn: u32,
    now: Instant,
    session: &'a mut KeyCache,
    sequences: Option<MutexGuard<'a, SeqTracker>>,
}

impl ConnectionHandler for Intake {
    type State = Connection;

    fn open(&self, info: &ConnInfo) -> Connection {
        ConnectionOpened.emit(&self.metrics);
        Connection {
            // Ids only need to tell live connections apart within one drain.
            id: info.id as u32,
            decoder: FrameDecoder::new(),
            session: KeyCache::default(),
            failed: false,
        }
    }

    fn data(&self, conn: &mut Connection, mut bytes: &[u8]) -> ControlFlow<()> {
        let mut frames = 0usize;
        // One clock reading per read: the frames of one read arrived together.
        let mut read = Read {
            conn: conn.id,
            now: Instant::now(),
            session: &mut conn.session,
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
                    FrameRejected::from(&error).emit(&self.metrics);
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
                FrameRejected::from(&error).emit(&self.metrics);
            }
        }
        ConnectionClosed.emit(&self.metrics);
    }

    fn rejected(&self, reason: RejectReason) {
        let reason = match reason {
            RejectReason::Limit => ConnectionRejectReason::Limit,
            RejectReason::PeerUid => ConnectionRejectReason::PeerUid,
        };
        ConnectionRejected { reason }.emit(&self.metrics);
    }
}
