//! Internal events, after Vector's pattern: one named struct per thing that can
//! happen, whose `emit` logs it and bumps its metrics in one place, so a counter and
//! its log line can never disagree. Noisy events log at debug or are rate-limited
//! (one line per window, carrying how many were suppressed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::codec::{CodecError, Superseded};
use crate::metrics::CoderdConnectResult;
use crate::metrics::{
    BatchDropReason, ConnectionRejectReason, ForwardResult, FrameRejectReason, LogDropReason,
    Metrics,
};

/// How often a rate-limited event may log.
pub const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Something that happened, recorded in the metrics and the proxy's log.
pub trait InternalEvent {
    /// Records it.
    fn emit(self, metrics: &Metrics);
}

/// Lets one log line through per window; counts the ones held back.
#[derive(Debug)]
pub struct LogLimiter {
    /// Milliseconds since [`clock_origin`] before which nothing is logged; 0 = open.
    next_allowed_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// Open: the first event logs.
    pub const fn new() -> Self {
        Self {
            next_allowed_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether to log now; `Some(n)` with `n` lines suppressed since the last one.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(now_ms(), LOG_WINDOW)
    }

    /// [`Self::admit`] at a given time (milliseconds on any monotonic clock).
    pub fn admit_at(&self, now_ms: u64, window: Duration) -> Option<u64> {
        let next = self.next_allowed_ms.load(Ordering::Relaxed);
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        if now_ms >= next
            && self
                .next_allowed_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(window_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

fn clock_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(clock_origin().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A frame was skipped, or closed its connection (see the codec's bad-input table).
#[derive(Debug, Clone, Copy)]
pub struct FrameRejected<'a> {
    /// Why.
    pub reason: FrameRejectReason,
    /// The connection it came on (the id of the reader's debug lines).
    pub conn: u64,
    /// What was wrong with it, when the codec said.
    pub error: Option<&'a CodecError>,
}

impl<'a> FrameRejected<'a> {
    /// The codec's `error` on connection `conn`.
    pub fn of(error: &'a CodecError, conn: u64) -> Self {
        Self {
            reason: error.into(),
            conn,
            error: Some(error),
        }
    }
}

impl InternalEvent for FrameRejected<'_> {
    fn emit(self, metrics: &Metrics) {
        static LIMITS: [LogLimiter; FrameRejectReason::ALL.len()] =
            [const { LogLimiter::new() }; FrameRejectReason::ALL.len()];
        metrics
            .frames_rejected
            .with_label_values(&[self.reason.as_str()])
            .inc();
        let index = FrameRejectReason::ALL
            .iter()
            .position(|&r| r == self.reason)
            .unwrap_or(0);
        if let Some(suppressed) = LIMITS[index].admit() {
            tracing::warn!(
                reason = %self.reason,
                conn = self.conn,
                error = self.error.map(tracing::field::display),
                suppressed,
                "rejected a frame from boundary"
            );
        }
    }
}

/// A TagV2 envelope set its oneof more than once: protobuf keeps the last variant
/// (which is handled as usual) and drops the earlier ones. What they carried is not
/// used, so the frame is also counted as `frames_rejected_total{reason="superseded"}`,
/// and the line says how many logs (or status messages) were not used.
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeVariantSuperseded {
    /// The connection it came on.
    pub conn: u64,
    /// What the later variant replaced.
    pub superseded: Superseded,
}

impl InternalEvent for EnvelopeVariantSuperseded {
    fn emit(self, metrics: &Metrics) {
        static LIMIT: LogLimiter = LogLimiter::new();
        metrics
            .frames_rejected
            .with_label_values(&[FrameRejectReason::Superseded.as_str()])
            .inc();
        if let Some(suppressed) = LIMIT.admit() {
            tracing::warn!(
                reason = %FrameRejectReason::Superseded,
                conn = self.conn,
                unused_logs = self.superseded.logs,
                unused_statuses = self.superseded.statuses,
                suppressed,
                "a frame from boundary set two envelope variants; the last one is used, the logs or status before it are not"
            );
        }
    }
}

/// The listener an accept failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// boundary's Unix socket (the reader tries again every 100 ms).
    Socket,
    /// `/metrics` and `/healthz`.
    Metrics,
    /// The embedded `sink --protocol coder`.
    CoderSink,
}

/// An accept failed (EMFILE when the process is out of descriptors, ENOBUFS, ...).
/// Each listener tries again after a pause and fails the same way while it lasts, so
/// the warning is rate-limited like the others: one line a listener every
/// [`LOG_WINDOW`], with how many were held back (`suppressed`). A connection waits in
/// the listen backlog meanwhile.
pub fn accept_failed(listener: Listener, error: &std::io::Error) {
    static LIMITS: [LogLimiter; 3] = [const { LogLimiter::new() }; 3];
    let (index, message) = match listener {
        Listener::Socket => (0, "accept failed; trying again every 100 ms"),
        Listener::Metrics => (1, "metrics server: accept failed"),
        Listener::CoderSink => (2, "coder sink: accept failed"),
    };
    if let Some(suppressed) = LIMITS[index].admit() {
        tracing::warn!(%error, suppressed, "{message}");
    }
}

/// A connection was closed as soon as it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionRejected {
    /// Why.
    pub reason: ConnectionRejectReason,
    /// The connecting process's uid, when the kernel gave one.
    pub peer_uid: Option<u32>,
    /// Its pid, when the kernel gave one.
    pub peer_pid: Option<i32>,
}

impl InternalEvent for ConnectionRejected {
    fn emit(self, metrics: &Metrics) {
        static LIMITS: [LogLimiter; 3] = [const { LogLimiter::new() }; 3];
        metrics
            .connections_rejected
            .with_label_values(&[self.reason.as_str()])
            .inc();
        let index = usize::from(self.reason == ConnectionRejectReason::PeerUid);
        if let Some(suppressed) = LIMITS[index].admit() {
            tracing::warn!(
                reason = %self.reason,
                peer_uid = self.peer_uid,
                peer_pid = self.peer_pid,
                suppressed,
                "rejected a connection"
            );
        }
    }
}

/// boundary connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionOpened;

impl InternalEvent for ConnectionOpened {
    fn emit(self, metrics: &Metrics) {
        metrics.connections.inc();
        tracing::debug!(open = metrics.connections.get(), "connection opened");
    }
}

/// A connection that [`ConnectionOpened`] counted has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionClosed;

impl InternalEvent for ConnectionClosed {
    fn emit(self, metrics: &Metrics) {
        metrics.connections.dec();
        tracing::debug!(open = metrics.connections.get(), "connection closed");
    }
}

/// Frames decoded and carrying logs were read (before they enter the ring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogsReceived {
    /// Frames.
    pub frames: u64,
    /// Logs in them.
    pub logs: u64,
}

impl InternalEvent for LogsReceived {
    fn emit(self, metrics: &Metrics) {
        metrics.logs_received.inc_by(self.logs);
        tracing::trace!(frames = self.frames, logs = self.logs, "received logs");
    }
}

/// A frame found the ring full and the reader waited for room (back-pressure on
/// the writers) before pushing it, or before dropping it when none came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitedForRoom {
    /// How long the reader waited.
    pub waited: std::time::Duration,
    /// True when room came; false when the patience ran out (the frame is dropped).
    pub room: bool,
}

impl InternalEvent for WaitedForRoom {
    fn emit(self, _metrics: &Metrics) {
        // Counted by what follows: the push, or the `buffer_full` drop.
        tracing::trace!(
            waited_us = self.waited.as_micros() as u64,
            room = self.room,
            "ring full: the reader waited for room"
        );
    }
}

/// One received frame found the ring full and was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferFull {
    /// Logs in the dropped frame.
    pub logs: u64,
}

impl InternalEvent for BufferFull {
    fn emit(self, metrics: &Metrics) {
        static LIMIT: LogLimiter = LogLimiter::new();
        drop_counts(
            metrics,
            BatchDropReason::BufferFull,
            LogDropReason::BufferFull,
            1,
            self.logs,
        );
        if let Some(suppressed) = LIMIT.admit() {
            tracing::warn!(
                logs = self.logs,
                suppressed,
                "ring buffer full: dropped a frame (coderd slower than boundary?)"
            );
        }
    }
}

/// boundary reported logs it dropped on its side (a TagV2 `BoundaryStatus` whose
/// counts the intake checked: neither negative nor absurd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundaryStatusReported {
    /// `dropped_channel_full`.
    pub channel_full: u64,
    /// `dropped_batch_full`.
    pub batch_full: u64,
}

impl InternalEvent for BoundaryStatusReported {
    fn emit(self, metrics: &Metrics) {
        static LIMIT: LogLimiter = LogLimiter::new();
        let (channel_full, batch_full) = (self.channel_full, self.batch_full);
        for (reason, n) in [
            (LogDropReason::BoundaryChannelFull, channel_full),
            (LogDropReason::BoundaryBatchFull, batch_full),
        ] {
            inc_saturating(
                &metrics.logs_dropped.with_label_values(&[reason.as_str()]),
                n,
            );
        }
        if channel_full == 0 && batch_full == 0 {
            tracing::debug!("boundary reported no drops");
        } else if let Some(suppressed) = LIMIT.admit() {
            tracing::warn!(
                channel_full,
                batch_full,
                suppressed,
                "boundary reported dropping logs"
            );
        }
    }
}

/// Adds `n` to `counter`, stopping at `u64::MAX` instead of wrapping to a small
/// value (which Prometheus would read as a reset). For counts from outside
/// (boundary's reports), which are rare: one lock serialises the read and the add,
/// so two readers adding at once cannot together pass the maximum.
fn inc_saturating(counter: &prometheus::IntCounter, n: u64) {
    static ADDING: crate::sync::Mutex<()> = crate::sync::Mutex::new(());
    let _adding = ADDING.lock().unwrap_or_else(|p| p.into_inner());
    let room = u64::MAX - counter.get();
    counter.inc_by(n.min(room));
}

/// A `ReportBoundaryLogs` call succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardSucceeded {
    /// Received frames merged into the request.
    pub frames: u64,
    /// Logs in it.
    pub logs: u64,
    /// How long the call took.
    pub latency: Duration,
}

impl InternalEvent for ForwardSucceeded {
    fn emit(self, metrics: &Metrics) {
        metrics.batches_forwarded.inc_by(self.frames);
        metrics.logs_forwarded.inc_by(self.logs);
        count_call(metrics, ForwardResult::Ok, self.latency);
        tracing::debug!(
            frames = self.frames,
            logs = self.logs,
            latency_ms = self.latency.as_secs_f64() * 1e3,
            "forwarded"
        );
    }
}

/// With a disk spool, a call went unanswered for [`crate::forwarder::ForwarderConfig::stall_after`]:
/// the destination counts as failing (it may have hung) until a call succeeds.
#[derive(Debug, Clone, Copy)]
pub struct ForwardStalled {
    pub after: Duration,
}

impl InternalEvent for ForwardStalled {
    fn emit(self, _metrics: &Metrics) {
        static LIMIT: LogLimiter = LogLimiter::new();
        if let Some(suppressed) = LIMIT.admit() {
            tracing::warn!(
                after = ?self.after,
                suppressed,
                "the destination has not answered a call; if the ring fills to half, its backlog goes to the disk spool"
            );
        }
    }
}

/// A `ReportBoundaryLogs` call failed (the request may still be retried).
#[derive(Debug, Clone, Copy)]
pub struct ForwardAttemptFailed<'a> {
    /// Whether the failure was transient (`retryable_error`), not a refusal.
    pub retryable: bool,
    /// Whether the forwarder will retry it: transient, with retry budget left.
    pub retrying: bool,
    /// How long the call took.
    pub latency: Duration,
    /// What coderd (or the transport) said.
    pub status: &'a tonic::Status,
}

impl InternalEvent for ForwardAttemptFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        static LIMITS: [LogLimiter; 3] = [const { LogLimiter::new() }; 3];
        let result = if self.retryable {
            ForwardResult::RetryableError
        } else {
            ForwardResult::PermanentError
        };
        count_call(metrics, result, self.latency);
        let kind = usize::from(self.retryable) + usize::from(self.retrying);
        if let Some(suppressed) = LIMITS[kind].admit() {
            self.log(suppressed);
        }
    }
}

impl ForwardAttemptFailed<'_> {
    /// The log line (`status_message`: the destination's text; the line's own
    /// `message` is the headline).
    fn log(&self, suppressed: u64) {
        let code = self.status.code();
        let status_message = self.status.message();
        let cause = status_cause(self.status);
        if self.retrying {
            tracing::warn!(
                ?code,
                status_message,
                cause,
                suppressed,
                "forwarding failed; will retry"
            );
        } else if self.retryable {
            // A warning like the retries before it: the drop (or the spooling) that
            // follows is logged on its own.
            tracing::warn!(
                ?code,
                status_message,
                cause,
                suppressed,
                "forwarding failed; no retries left (--retry-max-elapsed)"
            );
        } else {
            tracing::error!(
                ?code,
                status_message,
                cause,
                suppressed,
                "forwarding failed permanently"
            );
        }
    }
}

/// The destination refused a request for its size: the forwarder splits it and
/// builds later requests within the limits it now knows.
#[derive(Debug, Clone, Copy)]
pub struct ForwardRefusedTooLarge<'a> {
    /// How long the call took.
    pub latency: Duration,
    /// What the destination said.
    pub status: &'a tonic::Status,
    /// Logs in the refused request.
    pub logs: u64,
    /// Its encoded bytes.
    pub bytes: u64,
    /// Most logs a request carries from now on.
    pub max_logs: usize,
    /// Most bytes a request carries from now on.
    pub max_bytes: usize,
}

impl InternalEvent for ForwardRefusedTooLarge<'_> {
    fn emit(self, metrics: &Metrics) {
        static LIMIT: LogLimiter = LogLimiter::new();
        count_call(metrics, ForwardResult::PermanentError, self.latency);
        if let Some(suppressed) = LIMIT.admit() {
            self.log(suppressed);
        }
    }
}

impl ForwardRefusedTooLarge<'_> {
    /// The log line (`status_message`: the destination's text).
    fn log(&self, suppressed: u64) {
        tracing::warn!(
            code = ?self.status.code(),
            status_message = self.status.message(),
            logs = self.logs,
            bytes = self.bytes,
            max_logs = self.max_logs,
            max_bytes = self.max_bytes,
            suppressed,
            "the destination refused a request as too large; splitting it, and sending at most max_logs logs and max_bytes bytes a request from now on"
        );
    }
}

/// A request was cut in two at a log boundary (refused for its size, or over the
/// size the destination was found to take).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestSplit {
    /// Logs in the request cut.
    pub logs: u64,
    /// Its encoded bytes.
    pub bytes: u64,
}

impl InternalEvent for RequestSplit {
    fn emit(self, metrics: &Metrics) {
        metrics.requests_split.inc();
        tracing::debug!(
            logs = self.logs,
            bytes = self.bytes,
            "split a request in two"
        );
    }
}

/// Why the forwarder gave up on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardDropReason {
    /// Permanent error, or retries ran out.
    ForwardFailed,
    /// Shutdown timeout ran out.
    Shutdown,
    /// At shutdown, the disk spool had no room (or could not be written) for what was
    /// still in memory (while running, a refused request waits in memory instead).
    SpoolFull,
    /// Found damaged in the disk spool.
    SpoolCorrupt,
}

/// The forwarder gave up on frames: counted as dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardDropped {
    /// Received frames given up.
    pub frames: u64,
    /// Logs in them.
    pub logs: u64,
    /// Why.
    pub reason: ForwardDropReason,
}

impl InternalEvent for ForwardDropped {
    fn emit(self, metrics: &Metrics) {
        static LIMIT: LogLimiter = LogLimiter::new();
        let (batch, log) = match self.reason {
            ForwardDropReason::ForwardFailed => {
                (BatchDropReason::ForwardFailed, LogDropReason::ForwardFailed)
            }
            ForwardDropReason::Shutdown => (BatchDropReason::Shutdown, LogDropReason::Shutdown),
            ForwardDropReason::SpoolFull => (BatchDropReason::SpoolFull, LogDropReason::SpoolFull),
            ForwardDropReason::SpoolCorrupt => {
                (BatchDropReason::SpoolCorrupt, LogDropReason::SpoolCorrupt)
            }
        };
        drop_counts(metrics, batch, log, self.frames, self.logs);
        let reason = log.as_str();
        match self.reason {
            // Shutdown drops happen once, at the end, and so do spool_full drops (a
            // full spool holds requests back while the proxy runs; it only drops them
            // when the proxy stops): always log them, since no later line would report
            // what the limiter held back.
            ForwardDropReason::Shutdown | ForwardDropReason::SpoolFull => {
                tracing::error!(
                    frames = self.frames,
                    logs = self.logs,
                    reason,
                    "dropped logs"
                );
            }
            ForwardDropReason::ForwardFailed | ForwardDropReason::SpoolCorrupt => {
                if let Some(suppressed) = LIMIT.admit() {
                    tracing::error!(
                        frames = self.frames,
                        logs = self.logs,
                        reason,
                        suppressed,
                        "dropped logs"
                    );
                }
            }
        }
    }
}

/// Logs are missing from a session's sequence-number run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceGap {
    /// How many numbers were skipped.
    pub missing: u64,
}

impl InternalEvent for SequenceGap {
    fn emit(self, metrics: &Metrics) {
        static LIMIT: LogLimiter = LogLimiter::new();
        metrics.sequence_gaps.inc_by(self.missing);
        if let Some(suppressed) = LIMIT.admit() {
            tracing::warn!(
                missing = self.missing,
                suppressed,
                "gap in a session's sequence numbers: boundary lost logs before sending them"
            );
        }
    }
}

/// Sequence numbers went back or repeated within a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceOutOfOrder {
    /// Logs whose number was below the next expected one.
    pub logs: u64,
}

impl InternalEvent for SequenceOutOfOrder {
    fn emit(self, metrics: &Metrics) {
        static LIMIT: LogLimiter = LogLimiter::new();
        metrics.sequence_out_of_order.inc_by(self.logs);
        if let Some(suppressed) = LIMIT.admit() {
            tracing::debug!(
                logs = self.logs,
                suppressed,
                "sequence number went back or repeated"
            );
        }
    }
}

/// The ring was sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingCapacity {
    /// Slots.
    pub capacity: usize,
}

impl InternalEvent for RingCapacity {
    fn emit(self, metrics: &Metrics) {
        metrics
            .ring_capacity
            .set(i64::try_from(self.capacity).unwrap_or(i64::MAX));
    }
}

/// Frames now waiting in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingOccupancy {
    /// Frames.
    pub len: usize,
}

impl InternalEvent for RingOccupancy {
    fn emit(self, metrics: &Metrics) {
        metrics
            .ring_occupancy
            .set(i64::try_from(self.len).unwrap_or(i64::MAX));
    }
}

/// Requests were written to the disk spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spooled {
    /// Received frames in them.
    pub frames: u64,
    /// Logs in them.
    pub logs: u64,
}

impl InternalEvent for Spooled {
    fn emit(self, metrics: &Metrics) {
        static LIMIT: LogLimiter = LogLimiter::new();
        metrics.spool.logs_spooled.inc_by(self.logs);
        if let Some(suppressed) = LIMIT.admit() {
            tracing::warn!(
                frames = self.frames,
                logs = self.logs,
                suppressed,
                "destination failing: wrote logs to the disk spool"
            );
        }
    }
}

/// A spooled request was acknowledged by the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolReplayed {
    /// Logs in it.
    pub logs: u64,
}

impl InternalEvent for SpoolReplayed {
    fn emit(self, metrics: &Metrics) {
        metrics.spool.logs_replayed.inc_by(self.logs);
        tracing::debug!(logs = self.logs, "replayed logs from the disk spool");
    }
}

/// What the disk spool was doing when its files failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolOp {
    /// Appending records.
    Write,
    /// Making appended records and the state durable.
    Sync,
    /// Reading the oldest record back.
    Read,
    /// Deleting delivered segments and saving how far records were acknowledged.
    Update,
    /// Making a deleted or replaced spool directory again, with the records held.
    Rebuild,
}

impl SpoolOp {
    const ALL: [SpoolOp; 4] = [
        SpoolOp::Write,
        SpoolOp::Sync,
        SpoolOp::Read,
        SpoolOp::Update,
    ];

    fn message(self) -> &'static str {
        match self {
            SpoolOp::Write => "writing to the disk spool",
            SpoolOp::Sync => "syncing the disk spool",
            SpoolOp::Read => "reading the disk spool",
            SpoolOp::Update => "updating the disk spool",
            SpoolOp::Rebuild => "making the deleted disk spool directory again",
        }
    }
}

/// The disk spool's files failed (a full or vanished disk, an I/O error). Logged
/// at most once a window for each operation, with the lines held back since: a
/// full disk fails every append and every tick. What it costs in logs is counted
/// where it happens (`spool_full` for an append that failed).
#[derive(Debug)]
pub struct SpoolIoFailed<'a> {
    pub op: SpoolOp,
    pub dir: &'a std::path::Path,
    pub error: &'a dyn std::error::Error,
}

impl InternalEvent for SpoolIoFailed<'_> {
    fn emit(self, _metrics: &Metrics) {
        static LIMITS: [LogLimiter; SpoolOp::ALL.len()] =
            [const { LogLimiter::new() }; SpoolOp::ALL.len()];
        let index = SpoolOp::ALL
            .iter()
            .position(|&op| op == self.op)
            .unwrap_or(0);
        if let Some(suppressed) = LIMITS[index].admit() {
            tracing::error!(
                dir = %self.dir.display(),
                error = %self.error,
                suppressed,
                "{}",
                self.op.message()
            );
        }
    }
}

/// A request found the disk spool full (`--spool-max-bytes`): it waits in memory,
/// and newer frames in the ring, until a replay frees room; the ring then fills, and
/// overflows as `buffer_full`.
#[derive(Debug)]
pub struct SpoolFull<'a> {
    pub dir: &'a std::path::Path,
    /// Bytes the spool's files take.
    pub bytes: u64,
    /// `--spool-max-bytes`.
    pub max_bytes: u64,
}

impl InternalEvent for SpoolFull<'_> {
    fn emit(self, _metrics: &Metrics) {
        static LIMIT: LogLimiter = LogLimiter::new();
        if let Some(suppressed) = LIMIT.admit() {
            tracing::warn!(
                dir = %self.dir.display(),
                bytes = self.bytes,
                max_bytes = self.max_bytes,
                suppressed,
                "the disk spool is full (--spool-max-bytes): newer logs wait in the ring until a replay frees room"
            );
        }
    }
}

/// The spool directory, its lock file or segment files holding records had been
/// deleted (or the directory replaced) while the proxy ran; the directory was made
/// again if needed and the records held written into it.
#[derive(Debug)]
pub struct SpoolDirRebuilt<'a> {
    pub dir: &'a std::path::Path,
    /// Records written into the new directory.
    pub records: usize,
}

impl InternalEvent for SpoolDirRebuilt<'_> {
    fn emit(self, _metrics: &Metrics) {
        tracing::error!(
            dir = %self.dir.display(),
            records = self.records,
            "the disk spool's directory or files were deleted or replaced; wrote the records it held into it again"
        );
    }
}

/// What the disk spool holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolOccupancy {
    /// Bytes of its segment files.
    pub bytes: u64,
    /// Received frames held.
    pub frames: u64,
    /// Logs held.
    pub logs: u64,
}

impl InternalEvent for SpoolOccupancy {
    fn emit(self, metrics: &Metrics) {
        let set = |g: &prometheus::IntGauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        set(&metrics.spool.bytes, self.bytes);
        set(&metrics.spool.frames, self.frames);
        set(&metrics.spool.logs, self.logs);
    }
}

/// The disk spool was opened and what it held recovered.
#[derive(Debug, Clone)]
pub struct SpoolRecovered<'a> {
    /// The spool directory.
    pub dir: &'a std::path::Path,
    /// What recovery found.
    pub recovery: crate::spool::Recovery,
}

impl InternalEvent for SpoolRecovered<'_> {
    fn emit(self, metrics: &Metrics) {
        let r = self.recovery;
        metrics
            .spool
            .logs_recovered
            .inc_by(r.intact.logs + r.corrupt.logs);
        if r.corrupt.frames > 0 || r.corrupt.logs > 0 {
            ForwardDropped {
                frames: r.corrupt.frames,
                logs: r.corrupt.logs,
                reason: ForwardDropReason::SpoolCorrupt,
            }
            .emit(metrics);
        }
        if r.damaged_bytes > 0 || r.state_damaged {
            tracing::error!(
                dir = %self.dir.display(),
                corrupt_frames = r.corrupt.frames,
                corrupt_logs = r.corrupt.logs,
                damaged_bytes = r.damaged_bytes,
                truncated_bytes = r.truncated_bytes,
                state_damaged = r.state_damaged,
                "the disk spool was damaged; what could not be read is counted as spool_corrupt"
            );
        }
        if r.state_unsaved {
            tracing::error!(
                dir = %self.dir.display(),
                "the disk spool's state could not be saved (is its filesystem full?); retrying while it runs"
            );
        }
        tracing::info!(
            dir = %self.dir.display(),
            frames = r.intact.frames,
            logs = r.intact.logs,
            "disk spool open; its logs are sent before newer ones"
        );
    }
}

/// The proxy's socket file is at the socket path and accepts connections: at
/// start, and again after it was lost.
#[derive(Debug, Clone, Copy)]
pub struct SocketBound<'a> {
    /// The socket path.
    pub path: &'a std::path::Path,
    /// Bound again after a loss.
    pub again: bool,
}

impl InternalEvent for SocketBound<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.socket_bound.set(1);
        if self.again {
            tracing::info!(socket = %self.path.display(), "socket served again");
        }
    }
}

/// The socket file at the socket path is no longer the proxy's own: deleted (a
/// tmp cleaner) or replaced by another file. New connections cannot reach the
/// proxy until the path is free and bound again.
#[derive(Debug, Clone, Copy)]
pub struct SocketLost<'a> {
    /// The socket path.
    pub path: &'a std::path::Path,
    /// What is there now: `deleted`, `replaced by a regular file`, ...
    pub what: &'a str,
}

impl InternalEvent for SocketLost<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.socket_lost.inc();
        metrics.socket_bound.set(0);
        tracing::warn!(
            socket = %self.path.display(),
            what = self.what,
            "socket file lost"
        );
    }
}

/// The proxy stopped serving its socket (shutdown).
#[derive(Debug, Clone, Copy)]
pub struct SocketReleased;

impl InternalEvent for SocketReleased {
    fn emit(self, metrics: &Metrics) {
        metrics.socket_bound.set(0);
    }
}

fn drop_counts(
    metrics: &Metrics,
    batch: BatchDropReason,
    log: LogDropReason,
    frames: u64,
    logs: u64,
) {
    metrics
        .batches_dropped
        .with_label_values(&[batch.as_str()])
        .inc_by(frames);
    metrics
        .logs_dropped
        .with_label_values(&[log.as_str()])
        .inc_by(logs);
}

fn count_call(metrics: &Metrics, result: ForwardResult, latency: Duration) {
    metrics
        .forward_requests
        .with_label_values(&[result.as_str()])
        .inc();
    metrics
        .forward_latency_seconds
        .observe(latency.as_secs_f64());
}

/// The errors under a status made on this side (a transport failure), outermost first,
/// joined by ": ", without the ones that only repeat the status's message; empty for a
/// status received from the destination.
fn status_cause(status: &tonic::Status) -> String {
    let mut cause = String::new();
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        let text = err.to_string();
        if text != status.message() {
            if !cause.is_empty() {
                cause.push_str(": ");
            }
            cause.push_str(&text);
        }
        source = err.source();
    }
    cause
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prometheus::Registry;

    use super::*;

    fn metrics() -> Arc<Metrics> {
        Metrics::new(&Registry::new()).unwrap()
    }

    /// A failed attempt to be retried, one out of retries, and one refused for good.
    fn every_kind_of_failed_attempt(status: &tonic::Status) -> [ForwardAttemptFailed<'_>; 3] {
        [(true, true), (true, false), (false, false)].map(|(retryable, retrying)| {
            ForwardAttemptFailed {
                retryable,
                retrying,
                latency: Duration::from_millis(1),
                status,
            }
        })
    }

    /// A JSON log line has each key once: a field named `message` would repeat the
    /// key the formatter gives the event's own text, and a JSON reader keeps only one
    /// (`--log-format json` printed `"message"` twice in these three lines).
    #[test]
    fn forwarding_failures_logged_as_json_keep_their_headline_and_the_destinations_text() {
        #[derive(Clone, Default)]
        struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        let status = tonic::Status::unknown("batch size 2 exceeds maximum of 1");
        // The lines themselves, past the rate limits other tests share.
        tracing::subscriber::with_default(subscriber, || {
            for attempt in every_kind_of_failed_attempt(&status) {
                attempt.log(0);
            }
            ForwardRefusedTooLarge {
                latency: Duration::from_millis(1),
                status: &status,
                logs: 2,
                bytes: 100,
                max_logs: 1,
                max_bytes: 100,
            }
            .log(0);
        });
        let out = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let headlines = [
            "forwarding failed; will retry",
            "forwarding failed; no retries left",
            "forwarding failed permanently",
            "the destination refused a request as too large",
        ];
        let printed: Vec<&str> = out.lines().collect();
        assert_eq!(printed.len(), headlines.len(), "{out}");
        for (line, headline) in printed.iter().zip(headlines) {
            assert_eq!(line.matches("\"message\":").count(), 1, "{line}");
            let json: serde_json::Value = serde_json::from_str(line).unwrap();
            let fields = &json["fields"];
            assert!(
                fields["message"].as_str().unwrap().starts_with(headline),
                "{line}"
            );
            assert_eq!(fields["status_message"], status.message(), "{line}");
        }
    }

    #[test]
    fn a_transport_failures_cause_is_spelled_out_and_a_received_status_has_none() {
        let broken = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let mut made_here = tonic::Status::unavailable("transport error");
        made_here.set_source(Arc::new(broken));
        assert_eq!(status_cause(&made_here), "broken pipe");
        let received = tonic::Status::permission_denied("workspace agent not authorized");
        assert_eq!(status_cause(&received), "");
    }

    #[test]
    fn limiter_admits_once_per_window_and_reports_what_it_held_back() {
        let limiter = LogLimiter::new();
        let window = Duration::from_secs(10);
        assert_eq!(limiter.admit_at(0, window), Some(0));
        assert_eq!(limiter.admit_at(1, window), None);
        assert_eq!(limiter.admit_at(9_999, window), None);
        assert_eq!(limiter.admit_at(10_000, window), Some(2));
        assert_eq!(limiter.admit_at(10_001, window), None);
        assert_eq!(limiter.admit_at(30_000, window), Some(1));
    }

    #[test]
    fn buffer_full_drops_one_batch_and_its_logs() {
        let m = metrics();
        BufferFull { logs: 7 }.emit(&m);
        BufferFull { logs: 3 }.emit(&m);
        assert_eq!(m.batches_dropped_for(BatchDropReason::BufferFull), 2);
        assert_eq!(m.logs_dropped_for(LogDropReason::BufferFull), 10);
        assert_eq!(m.logs_dropped_for(LogDropReason::ForwardFailed), 0);
    }

    #[test]
    fn forward_dropped_counts_under_its_reason() {
        let m = metrics();
        ForwardDropped {
            frames: 2,
            logs: 20,
            reason: ForwardDropReason::ForwardFailed,
        }
        .emit(&m);
        ForwardDropped {
            frames: 1,
            logs: 5,
            reason: ForwardDropReason::Shutdown,
        }
        .emit(&m);
        assert_eq!(m.batches_dropped_for(BatchDropReason::ForwardFailed), 2);
        assert_eq!(m.logs_dropped_for(LogDropReason::ForwardFailed), 20);
        assert_eq!(m.batches_dropped_for(BatchDropReason::Shutdown), 1);
        assert_eq!(m.logs_dropped_for(LogDropReason::Shutdown), 5);
    }

    #[test]
    fn received_forwarded_and_dropped_logs_balance_in_accounting() {
        let m = metrics();
        LogsReceived {
            frames: 3,
            logs: 30,
        }
        .emit(&m);
        ForwardSucceeded {
            frames: 2,
            logs: 20,
            latency: Duration::from_millis(3),
        }
        .emit(&m);
        assert_eq!(m.accounting().pending(), Some(10));
        ForwardDropped {
            frames: 1,
            logs: 10,
            reason: ForwardDropReason::Shutdown,
        }
        .emit(&m);
        assert_eq!(m.accounting().pending(), Some(0));
        assert_eq!(m.batches_forwarded.get(), 2);
        assert_eq!(m.forward_requests_for(ForwardResult::Ok), 1);
        assert_eq!(m.forward_latency_seconds.get_sample_count(), 1);
    }

    #[test]
    fn failed_attempts_count_by_result_and_time_the_call() {
        let m = metrics();
        let status = tonic::Status::unavailable("coderd down");
        for attempt in every_kind_of_failed_attempt(&status) {
            attempt.emit(&m);
        }
        assert_eq!(m.forward_requests_for(ForwardResult::RetryableError), 2);
        assert_eq!(m.forward_requests_for(ForwardResult::PermanentError), 1);
        assert_eq!(m.forward_requests_for(ForwardResult::Ok), 0);
        assert_eq!(m.forward_latency_seconds.get_sample_count(), 3);
        assert_eq!(m.accounting().settled(), 0, "an attempt settles nothing");
    }

    #[test]
    fn boundary_status_adds_its_two_counts() {
        let m = metrics();
        BoundaryStatusReported {
            channel_full: 4,
            batch_full: 2,
        }
        .emit(&m);
        BoundaryStatusReported {
            channel_full: 0,
            batch_full: 1,
        }
        .emit(&m);
        assert_eq!(m.logs_dropped_for(LogDropReason::BoundaryChannelFull), 4);
        assert_eq!(m.logs_dropped_for(LogDropReason::BoundaryBatchFull), 3);
        assert_eq!(m.accounting().settled(), 0, "boundary's drops are not ours");
    }

    #[test]
    fn boundary_status_counts_stop_at_the_maximum_instead_of_wrapping() {
        let m = metrics();
        for n in [u64::MAX / 2 + 1, u64::MAX / 2 + 1, 2] {
            BoundaryStatusReported {
                channel_full: n,
                batch_full: 0,
            }
            .emit(&m);
        }
        assert_eq!(
            m.logs_dropped_for(LogDropReason::BoundaryChannelFull),
            u64::MAX
        );
    }

    #[test]
    fn codec_errors_map_to_their_reject_reason() {
        let m = metrics();
        let errors = [
            CodecError::UnsupportedTag(9),
            CodecError::TooLarge(40_000),
            CodecError::Decode("bad varint".into()),
            CodecError::UnknownVariant,
            CodecError::Truncated { buffered: 2 },
            CodecError::Decode("again".into()),
        ];
        for error in &errors {
            FrameRejected::of(error, 1).emit(&m);
        }
        assert_eq!(m.frames_rejected_for(FrameRejectReason::UnsupportedTag), 1);
        assert_eq!(m.frames_rejected_for(FrameRejectReason::TooLarge), 1);
        assert_eq!(m.frames_rejected_for(FrameRejectReason::DecodeError), 2);
        assert_eq!(m.frames_rejected_for(FrameRejectReason::UnknownVariant), 1);
        assert_eq!(m.frames_rejected_for(FrameRejectReason::Truncated), 1);
    }

    #[test]
    fn connection_events_track_the_open_count_and_rejections() {
        let m = metrics();
        ConnectionOpened.emit(&m);
        ConnectionOpened.emit(&m);
        ConnectionClosed.emit(&m);
        ConnectionRejected {
            reason: ConnectionRejectReason::PeerUid,
            peer_uid: Some(1000),
            peer_pid: Some(42),
        }
        .emit(&m);
        assert_eq!(m.connections.get(), 1);
        assert_eq!(
            m.connections_rejected_for(ConnectionRejectReason::PeerUid),
            1
        );
        assert_eq!(m.connections_rejected_for(ConnectionRejectReason::Limit), 0);
    }

    #[test]
    fn sequence_and_ring_events_set_their_metrics() {
        let m = metrics();
        SequenceGap { missing: 5 }.emit(&m);
        SequenceOutOfOrder { logs: 1 }.emit(&m);
        SequenceOutOfOrder { logs: 1 }.emit(&m);
        RingCapacity { capacity: 4096 }.emit(&m);
        RingOccupancy { len: 17 }.emit(&m);
        assert_eq!(m.sequence_gaps.get(), 5);
        assert_eq!(m.sequence_out_of_order.get(), 2);
        assert_eq!(m.ring_capacity.get(), 4096);
        assert_eq!(m.ring_occupancy.get(), 17);
    }
}

/// The last connect failure logged, so a failure repeated on every retry (a wrong token,
/// an old coderd, coderd down) is logged once, not once per attempt; cleared on success.
static LAST_CODERD_CONNECT_FAILURE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// The coder transport connected to coderd's Agent API.
#[derive(Debug, Clone, Copy)]
pub struct CoderdConnected<'a> {
    /// coderd's base URL.
    pub url: &'a str,
    /// The version coderd reported.
    pub version: &'a str,
}

impl InternalEvent for CoderdConnected<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .coderd_connects
            .with_label_values(&[CoderdConnectResult::Ok.as_str()])
            .inc();
        metrics.coderd_connected.set(1);
        LAST_CODERD_CONNECT_FAILURE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        tracing::info!(
            url = self.url,
            version = self.version,
            "connected to coderd"
        );
    }
}

/// A connection attempt to coderd's Agent API failed.
#[derive(Debug, Clone, Copy)]
pub struct CoderdConnectFailed<'a> {
    /// How, as counted.
    pub result: CoderdConnectResult,
    /// coderd's base URL.
    pub url: &'a str,
    /// What went wrong (for an HTTP error: the status and coderd's message).
    pub error: &'a str,
}

impl InternalEvent for CoderdConnectFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .coderd_connects
            .with_label_values(&[self.result.as_str()])
            .inc();
        let new = {
            let mut last = LAST_CODERD_CONNECT_FAILURE
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let new = last.as_deref() != Some(self.error);
            if new {
                *last = Some(self.error.to_owned());
            }
            new
        };
        let result = self.result.as_str();
        if !new {
            tracing::debug!(
                url = self.url,
                result,
                error = self.error,
                "connecting to coderd failed again"
            );
        } else if self.result == CoderdConnectResult::NetworkError {
            tracing::warn!(
                url = self.url,
                result,
                error = self.error,
                "connecting to coderd failed; the next call connects again"
            );
        } else {
            tracing::error!(
                url = self.url,
                result,
                error = self.error,
                "coderd refused the connection"
            );
        }
    }
}

/// The coder transport's connection to coderd ended; the next call reconnects.
#[derive(Debug, Clone, Copy)]
pub struct CoderdDisconnected<'a> {
    /// Why.
    pub reason: &'a str,
}

impl InternalEvent for CoderdDisconnected<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.coderd_connected.set(0);
        tracing::warn!(reason = self.reason, "disconnected from coderd");
    }
}

/// Logs were forwarded whose session_id is not a UUID: coderd logs and does not store them.
#[derive(Debug, Clone, Copy)]
pub struct NonUuidSessionForwarded<'a> {
    /// Logs in the request.
    pub logs: u64,
    /// The session id.
    pub session_id: &'a str,
}

impl InternalEvent for NonUuidSessionForwarded<'_> {
    fn emit(self, metrics: &Metrics) {
        static LIMIT: LogLimiter = LogLimiter::new();
        metrics.logs_non_uuid_session.inc_by(self.logs);
        if let Some(suppressed) = LIMIT.admit() {
            tracing::warn!(
                logs = self.logs,
                session_id = self.session_id,
                suppressed,
                "forwarded logs whose session_id is not a UUID; coderd does not store them"
            );
        }
    }
}
