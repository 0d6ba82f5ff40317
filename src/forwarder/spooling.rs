//! The forwarder's side of the disk spool: writes requests it cannot deliver now,
//! reads back the oldest for replay, acknowledges what the destination took, and
//! keeps the spool's metrics current. Every spool outcome is counted here.

use std::time::Instant;

use prost::encoding::WireType;

use crate::events::{
    ForwardDropReason, ForwardDropped, InternalEvent, SpoolDirRebuilt, SpoolFull, SpoolIoFailed,
    SpoolOccupancy, SpoolOp, SpoolReplayed, Spooled,
};
use crate::metrics::Metrics;
use crate::reporter::EncodedRequest;
use crate::spool::{AppendError, Counts, Fsync, Spool};

use super::batch::{self, Limits, OrderKey, Outgoing};
use super::split;

/// The spool's oldest records read back for one replay, and one request for each
/// session id and process name among them (the records of one session merged in
/// order, within the limits), sent in the order of their first records. The records
/// are acknowledged oldest first as the requests carrying them are settled.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The records, oldest first (the first is the spool's oldest).
    pub records: Vec<Part>,
    /// One request a session id and process name: its records' logs that no
    /// earlier replay settled.
    pub requests: Vec<Outgoing>,
}

/// One spooled record inside a [`Replay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub seq: u64,
    pub frames: u32,
    pub logs: u32,
    /// The frames and logs at its start an earlier replay stopped part-way settled:
    /// not sent again.
    pub skipped: Counts,
    /// Which of the replay's requests carries the rest of it, and the number of the
    /// first of those logs there.
    pub request: usize,
    pub start: u32,
}

impl Part {
    /// Logs of it the replay sends.
    fn sent(&self) -> u64 {
        u64::from(self.logs) - self.skipped.logs
    }
}

/// What [`Spooler::peek`] found.
#[derive(Debug)]
pub enum Peeked {
    /// The oldest records, to replay.
    Record(Replay),
    /// Nothing held: delivery goes direct again.
    Empty,
    /// Records are held but the oldest could not be read (counted as a
    /// `SpoolIoFailed`): try again later, still behind the spool so that nothing
    /// newer overtakes what it holds.
    Later,
}

impl Replay {
    /// The requests as the delivery loop sends them, in order (each may be split like
    /// any other).
    pub fn outgoing(&self) -> Vec<Outgoing> {
        self.requests.clone()
    }
}

/// A spooled request as the replay sends it: replays go one at a time, and the
/// requests of one replay one after another, so there is nothing to order against.
fn replayed_request(request: EncodedRequest, frame_ends: Vec<u32>) -> Outgoing {
    Outgoing {
        request,
        order: OrderKey {
            conns: Vec::new(),
            session: 0,
        },
        frame_ends,
    }
}

/// A spooled record's request without the logs an earlier replay settled.
fn unsettled(request: EncodedRequest, frame_ends: Vec<u32>, done: Counts) -> Outgoing {
    let whole = replayed_request(request, frame_ends);
    match split::at(&whole, done.logs as usize) {
        Some((_, rest)) => rest,
        None => whole,
    }
}

/// Requests (sessions) one replay sends at most, one after another.
const REPLAY_REQUESTS: usize = 64;
/// Bytes of requests one replay builds at most (or one request's limit, if larger):
/// what it holds in memory, twice with the records it read.
const REPLAY_BYTES: usize = 4 << 20;

/// A record's payload: the request's `frame_ends` (one little-endian u32 per frame,
/// `frames` of them), then the encoded request.
fn encode_payload(out: &Outgoing, buf: &mut Vec<u8>) {
    buf.clear();
    buf.reserve(
        out.frame_ends.len() * 4 + out.request.bytes.len() + 16 + 4 * out.order.conns.len(),
    );
    for end in &out.frame_ends {
        buf.extend_from_slice(&end.to_le_bytes());
    }
    buf.extend_from_slice(&out.request.bytes);
    if !out.order.conns.is_empty() {
        let len = 8 + 4 * out.order.conns.len();
        let mut field = Vec::with_capacity(len + 4);
        prost::encoding::encode_key(CONNS_FIELD, WireType::LengthDelimited, &mut field);
        prost::encoding::encode_varint(len as u64, &mut field);
        field.extend_from_slice(&process_epoch().to_le_bytes());
        for conn in &out.order.conns {
            field.extend_from_slice(&conn.to_le_bytes());
        }
        buf.extend_from_slice(&field);
    }
}

/// The field a spooled request ends with, stripped before it is sent: the
/// connections whose frames it carries, as this process's random epoch (8 bytes)
/// and each reader connection id (4 bytes each), little-endian. A replay keeps each
/// connection's order by them. Records without it (written before it existed) are
/// taken to share a connection with every other record. A field number no
/// `ReportBoundaryLogsRequest` uses; an older proxy replaying the record sends it
/// along, and coderd ignores it as an unknown field.
const CONNS_FIELD: u32 = 2047;

/// A random number drawn once a process: connection ids are the reader's, and two
/// processes' ids must not look like the same connection.
fn process_epoch() -> u64 {
    static EPOCH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(|| fastrand::u64(..))
}

/// Connections a spooled record's frames came from; `None` when not known.
type Conns = Option<Vec<(u64, u32)>>;

/// Takes [`CONNS_FIELD`] off the end of a spooled request: the request as sent, and
/// its connections.
fn strip_conns(bytes: bytes::Bytes) -> (bytes::Bytes, Conns) {
    let mut at = batch::records_end(&bytes) as usize;
    while at < bytes.len() {
        let mut rest = &bytes[at..];
        let Ok((field, WireType::LengthDelimited)) = prost::encoding::decode_key(&mut rest) else {
            break;
        };
        let Ok(len) = prost::encoding::decode_varint(&mut rest) else {
            break;
        };
        let Some(body) = usize::try_from(len).ok().and_then(|len| rest.get(..len)) else {
            break;
        };
        let end = bytes.len() - rest.len() + body.len();
        if field == CONNS_FIELD && end == bytes.len() {
            let conns = (body.len() >= 8 && (body.len() - 8) % 4 == 0).then(|| {
                let epoch = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
                body[8..]
                    .chunks_exact(4)
                    .map(|c| (epoch, u32::from_le_bytes(c.try_into().expect("4 bytes"))))
                    .collect()
            });
            return (bytes.slice(..at), conns);
        }
        at = end;
    }
    (bytes, None)
}

/// Splits a record's payload back; `None` if it is too short for its frame count.
fn decode_payload(frames: u32, logs: u32, payload: bytes::Bytes) -> Option<Decoded> {
    let prefix = frames as usize * 4;
    if payload.len() < prefix {
        return None;
    }
    let frame_ends = payload[..prefix]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    let (bytes, conns) = strip_conns(payload.slice(prefix..));
    let request = EncodedRequest {
        records_end: Some(batch::records_end(&bytes)),
        bytes,
        logs,
        frames,
    };
    Some((frame_ends, request, conns))
}

/// A record's payload decoded: its frame ends, its request, its connections.
type Decoded = (Vec<u32>, EncodedRequest, Conns);

/// Counts `out` as dropped for `spool_full`: the spool refused it with nowhere else
/// for it to go.
pub(super) fn dropped_full(out: &Outgoing, metrics: &Metrics) {
    ForwardDropped {
        frames: out.request.frames.into(),
        logs: out.request.logs.into(),
        reason: ForwardDropReason::SpoolFull,
    }
    .emit(metrics);
}

/// The spool as the forwarder uses it.
#[derive(Debug)]
pub struct Spooler {
    spool: Spool,
    buf: Vec<u8>,
    /// The request limits: how frames still in the ring at shutdown are merged before
    /// they are written, and how far a replay merges records.
    pub(super) limits: Limits,
}

impl Spooler {
    /// Wraps an open spool; sets the spool gauges.
    pub fn new(spool: Spool, limits: Limits, metrics: &Metrics) -> Self {
        let spooler = Self {
            spool,
            buf: Vec::new(),
            limits,
        };
        spooler.occupancy(metrics);
        spooler
    }

    /// True while records wait for replay.
    pub fn is_empty(&self) -> bool {
        self.spool.is_empty()
    }

    /// Writes `request`, or counts it as `spool_full` when there is no room (or the
    /// write failed). Returns whether it was written.
    pub fn append(&mut self, out: &Outgoing, metrics: &Metrics) -> bool {
        self.append_all(std::iter::once(out), metrics) == 1
    }

    /// Writes `out` and counts it as spooled; false, with nothing counted dropped,
    /// when the spool has no room for it or the write failed (counted as a spool
    /// I/O failure): the caller keeps it.
    pub fn try_append(&mut self, out: &Outgoing, metrics: &Metrics) -> bool {
        self.keep_dir(metrics);
        let written = self.write(out, metrics);
        if written {
            self.synced(metrics);
            Spooled {
                frames: out.request.frames.into(),
                logs: out.request.logs.into(),
            }
            .emit(metrics);
            self.occupancy(metrics);
        }
        written
    }

    /// Writes `outs` in order and makes them durable together (one sync for the
    /// batch with `--spool-fsync always`) before counting them as spooled; what does
    /// not fit is counted as `spool_full`. Returns how many were written.
    pub fn append_all<'o>(
        &mut self,
        outs: impl IntoIterator<Item = &'o Outgoing>,
        metrics: &Metrics,
    ) -> usize {
        self.keep_dir(metrics);
        let mut written = Spooled { frames: 0, logs: 0 };
        let mut count = 0;
        for out in outs {
            let (frames, logs) = (u64::from(out.request.frames), u64::from(out.request.logs));
            if self.write(out, metrics) {
                written.frames += frames;
                written.logs += logs;
                count += 1;
                continue;
            }
            dropped_full(out, metrics);
        }
        if count > 0 {
            self.synced(metrics);
            written.emit(metrics);
        }
        self.occupancy(metrics);
        count
    }

    /// Appends one record, not yet synced; false when there was no room or the write
    /// failed (counted as a spool I/O failure).
    fn write(&mut self, out: &Outgoing, metrics: &Metrics) -> bool {
        let request = &out.request;
        encode_payload(out, &mut self.buf);
        match self
            .spool
            .append_unsynced(request.frames, request.logs, &self.buf)
        {
            Ok(()) => true,
            Err(AppendError::Full) => {
                SpoolFull {
                    dir: self.spool.dir(),
                    bytes: self.spool.disk_bytes(),
                    max_bytes: self.spool.max_bytes(),
                }
                .emit(metrics);
                false
            }
            Err(AppendError::Io(error)) => {
                self.failed(SpoolOp::Write, &error, metrics);
                false
            }
        }
    }

    /// With `--spool-fsync always`, syncs what was just written before it counts as
    /// spooled.
    fn synced(&mut self, metrics: &Metrics) {
        if self.spool.fsync() == Fsync::Always {
            if let Err(error) = self.spool.sync() {
                // Written but perhaps not durable: still held (and replayed) by this
                // process, so still counted as spooled.
                self.failed(SpoolOp::Sync, &error, metrics);
            }
        }
    }

    /// The oldest record, for replay. Records found damaged are counted as
    /// `spool_corrupt` and skipped; a read error leaves the record for later.
    pub fn peek(&mut self, metrics: &Metrics) -> Peeked {
        loop {
            let read = self.spool.peek();
            let corrupt = self.spool.take_corrupt();
            if corrupt.frames > 0 || corrupt.logs > 0 {
                ForwardDropped {
                    frames: corrupt.frames,
                    logs: corrupt.logs,
                    reason: ForwardDropReason::SpoolCorrupt,
                }
                .emit(metrics);
                self.occupancy(metrics);
            }
            let record = match read {
                Ok(Some(record)) => record,
                Ok(None) => return Peeked::Empty,
                Err(error) => {
                    self.failed(SpoolOp::Read, &error, metrics);
                    return Peeked::Later;
                }
            };
            let Some((frame_ends, request, conns)) =
                decode_payload(record.frames, record.logs, record.payload)
            else {
                // Intact by its CRC but not what this proxy writes: skipped, counted,
                // and the next record read.
                tracing::error!(
                    seq = record.seq,
                    "a spooled record too short for its frame count"
                );
                let _ = self.spool.ack(record.seq);
                ForwardDropped {
                    frames: u64::from(record.frames) - record.done.frames,
                    logs: u64::from(record.logs) - record.done.logs,
                    reason: ForwardDropReason::SpoolCorrupt,
                }
                .emit(metrics);
                self.occupancy(metrics);
                continue;
            };
            let mut replay = Replay {
                records: vec![Part {
                    seq: record.seq,
                    frames: record.frames,
                    logs: record.logs,
                    skipped: record.done,
                    request: 0,
                    start: 0,
                }],
                requests: vec![unsettled(request, frame_ends, record.done)],
            };
            self.gather(&mut replay, conns);
            return Peeked::Record(replay);
        }
    }

    /// Adds to `replay` the records after its oldest (whose connections are
    /// `first_conns`), each merged into the latest request of its session id and
    /// process name, unless that would send it ahead of a record of one of its
    /// connections in a request made since (then, and for a session not met yet, a
    /// new request, sent after the others). Every request stays within the limits,
    /// and there are at most [`REPLAY_REQUESTS`]; the first record that does not fit
    /// ends the replay (records leave the spool oldest first). So each session's and
    /// each connection's logs keep their order, and a backlog spooled in small
    /// requests (live traffic cut every `--batch-linger`, several sessions
    /// interleaved) is replayed as it would have been sent, not one small record a
    /// round trip, which a busy workspace outruns. Protobuf merges repeated fields, so
    /// the records' log fields follow one another and the session id and process name
    /// close each request once.
    fn gather(&mut self, replay: &mut Replay, first_conns: Conns) {
        /// A request being merged: the records' log fields so far, and the trailer.
        struct Merging {
            records: bytes::BytesMut,
            trailer: bytes::Bytes,
            logs: usize,
            frames: u32,
            frame_ends: Vec<u32>,
            /// Connections of its records; `None` when one's are not known.
            conns: Conns,
        }
        fn split_trailer(request: &EncodedRequest) -> Option<(&[u8], bytes::Bytes)> {
            let end = request.records_end? as usize;
            Some((&request.bytes[..end], request.bytes.slice(end..)))
        }
        /// Whether records of `a` and `b` may change places (no connection in common).
        fn apart(a: &Conns, b: &Conns) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => !a.iter().any(|c| b.contains(c)),
                _ => false,
            }
        }
        let Some((records, trailer)) = split_trailer(&replay.requests[0].request) else {
            return;
        };
        let first = &replay.requests[0];
        let mut merging = vec![Merging {
            records: bytes::BytesMut::from(records),
            trailer,
            logs: first.request.logs as usize,
            frames: first.request.frames,
            frame_ends: first.frame_ends.clone(),
            conns: first_conns,
        }];
        let limits = self.limits;
        let fits = |m: &Merging, logs: usize, len: usize| {
            m.logs + logs <= limits.max_logs
                && m.records.len() + len + m.trailer.len() <= limits.max_bytes
        };
        let most = REPLAY_BYTES.max(limits.max_bytes);
        let mut total = replay.requests[0].request.bytes.len();
        while let Some(next) = self.spool.peek_next() {
            let (seq, frames, logs, done) = (next.seq, next.frames, next.logs, next.done);
            let decoded = decode_payload(frames, logs, next.payload);
            let taken = decoded.and_then(|(ends, request, conns)| {
                let Outgoing {
                    request,
                    frame_ends: ends,
                    ..
                } = unsettled(request, ends, done);
                let (records, trailer) = split_trailer(&request)?;
                if total + records.len() + trailer.len() > most {
                    return None;
                }
                let latest = merging.iter().rposition(|m| m.trailer == trailer);
                let joins = latest.filter(|&at| {
                    merging[at + 1..]
                        .iter()
                        .all(|later| apart(&later.conns, &conns))
                });
                let at = match (joins, latest) {
                    (Some(at), _) | (None, Some(at))
                        if !fits(&merging[at], request.logs as usize, records.len()) =>
                    {
                        // Its session's request is full: the replay ends here.
                        return None;
                    }
                    (Some(at), _) => at,
                    _ if merging.len() < REPLAY_REQUESTS => {
                        merging.push(Merging {
                            records: bytes::BytesMut::new(),
                            trailer,
                            logs: 0,
                            frames: 0,
                            frame_ends: Vec::new(),
                            conns: Some(Vec::new()),
                        });
                        merging.len() - 1
                    }
                    _ => return None,
                };
                let m = &mut merging[at];
                total += records.len() + if m.logs == 0 { m.trailer.len() } else { 0 };
                let start = m.logs as u32;
                m.records.extend_from_slice(records);
                m.frame_ends.extend(ends.iter().map(|e| e + start));
                m.logs += request.logs as usize;
                m.frames += request.frames;
                m.conns = match (m.conns.take(), conns) {
                    (Some(mut all), Some(more)) => {
                        all.extend(
                            more.into_iter()
                                .filter(|c| !all.contains(c))
                                .collect::<Vec<_>>(),
                        );
                        Some(all)
                    }
                    _ => None,
                };
                Some(Part {
                    seq,
                    frames,
                    logs,
                    skipped: done,
                    request: at,
                    start,
                })
            });
            match taken {
                Some(part) => replay.records.push(part),
                None => {
                    // Read but not taken: the replay stops before it.
                    self.spool.unpeek_last();
                    break;
                }
            }
        }
        replay.requests = merging
            .into_iter()
            .map(|m| {
                let records_end = m.records.len() as u32;
                let mut bytes = m.records;
                bytes.extend_from_slice(&m.trailer);
                let request = EncodedRequest {
                    bytes: bytes.freeze(),
                    logs: m.logs as u32,
                    frames: m.frames,
                    records_end: Some(records_end),
                };
                replayed_request(request, m.frame_ends)
            })
            .collect();
    }

    /// A replay ended: `settled[q]` logs of its `q`th request ([`Replay::outgoing`])
    /// were settled from its start, delivered or refused for good (already counted
    /// as `forward_failed`), `delivered` of all of them delivered (a request not
    /// sent: none). Each record settled whole is acknowledged, each settled in part
    /// keeps how far: the spool lets records go oldest first, and the next replay
    /// sends only what is left of each.
    pub fn settle(&mut self, replay: &Replay, settled: &[u64], delivered: u64, metrics: &Metrics) {
        for part in &replay.records {
            let upto = settled.get(part.request).copied().unwrap_or(0);
            let start = u64::from(part.start);
            let sent = upto.saturating_sub(start).min(part.sent());
            if sent == part.sent() {
                self.ack_record(part.seq, metrics);
            } else if sent > 0 {
                // Its frames as the parts sent counted them: each with the part
                // holding its last log.
                let frames = replay.requests[part.request]
                    .frame_ends
                    .iter()
                    .filter(|&&e| u64::from(e) > start && u64::from(e) <= upto)
                    .count() as u64;
                let done = Counts {
                    frames: part.skipped.frames + frames,
                    logs: part.skipped.logs + sent,
                };
                if !self.spool.ack_part(part.seq, done) {
                    tracing::error!(seq = part.seq, "acknowledged part of a record not held");
                }
            }
        }
        if delivered > 0 {
            SpoolReplayed { logs: delivered }.emit(metrics);
        }
        self.occupancy(metrics);
    }

    /// Record `seq` was settled whole: it leaves the spool's counts, and the spool
    /// once every record before it did.
    fn ack_record(&mut self, seq: u64, metrics: &Metrics) {
        match self.spool.ack(seq) {
            Ok(true) => {}
            // It left the spool all the same.
            Err(error) => self.failed(SpoolOp::Update, &error, metrics),
            Ok(false) => {
                tracing::error!(seq, "acknowledged a record that is not the spool's oldest")
            }
        }
    }

    /// True while records are held or something waits to be synced: the delivery
    /// loop then ticks (an idle spool costs the loop nothing).
    pub fn needs_tick(&self) -> bool {
        !self.spool.is_empty() || self.spool.is_dirty()
    }

    /// Syncs what is due (see [`Spool::tick`]).
    pub fn tick(&mut self, metrics: &Metrics) {
        self.keep_dir(metrics);
        if let Err(error) = self.spool.tick(Instant::now()) {
            self.failed(SpoolOp::Sync, &error, metrics);
        }
        // A segment deleted late (its first deletion failed) frees its bytes here.
        self.occupancy(metrics);
    }

    /// Makes everything durable (at shutdown).
    pub fn sync(&mut self, metrics: &Metrics) {
        self.keep_dir(metrics);
        if let Err(error) = self.spool.flush() {
            self.failed(SpoolOp::Sync, &error, metrics);
        }
    }

    /// At stop, after [`Self::sync`]: records that live only in deleted files (the
    /// directory was deleted and could not be made again) are lost with the process:
    /// counted as `spool_full` (the spool could not keep them), not left in
    /// `spool_logs` as if a restart would find them.
    pub fn count_unreachable(&mut self, metrics: &Metrics) {
        let Some(lost) = self.spool.abandon_if_unreachable() else {
            return;
        };
        tracing::error!(
            dir = %self.spool.dir().display(),
            frames = lost.frames,
            logs = lost.logs,
            "the disk spool's files were deleted and could not be written again: the logs they held end with this process (counted as spool_full)"
        );
        ForwardDropped {
            frames: lost.frames,
            logs: lost.logs,
            reason: ForwardDropReason::SpoolFull,
        }
        .emit(metrics);
        self.occupancy(metrics);
    }

    /// Makes the spool's directory again if it was deleted or replaced, with the
    /// records held (see [`Spool::rebuild_if_lost`]).
    fn keep_dir(&mut self, metrics: &Metrics) {
        match self.spool.rebuild_if_lost() {
            Ok(None) => {}
            Ok(Some(records)) => {
                SpoolDirRebuilt {
                    dir: self.spool.dir(),
                    records,
                }
                .emit(metrics);
                self.occupancy(metrics);
            }
            Err(error) => self.failed(SpoolOp::Rebuild, &error, metrics),
        }
    }

    fn failed(&self, op: SpoolOp, error: &dyn std::error::Error, metrics: &Metrics) {
        SpoolIoFailed {
            op,
            dir: self.spool.dir(),
            error,
        }
        .emit(metrics);
    }

    fn occupancy(&self, metrics: &Metrics) {
        let held = self.spool.held();
        SpoolOccupancy {
            bytes: self.spool.disk_bytes(),
            frames: held.frames,
            logs: held.logs,
        }
        .emit(metrics);
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Registry;

    use super::*;
    use crate::codec::LogFrame;
    use crate::forwarder::coalesce;
    use crate::intake::QueuedFrame;
    use crate::metrics::LogDropReason;
    use crate::spool::{Fsync, SpoolConfig};
    use crate::workload;

    fn requests() -> Vec<Outgoing> {
        // 2 frames of 60 logs cut into requests of 50: the first request carries no
        // frame's end, the second the first frame's, the third the second frame's.
        let frames: Vec<QueuedFrame> = (0..2)
            .map(|i| QueuedFrame {
                frame: LogFrame::from_request(&workload::request("s", "p", i * 60, 60)).unwrap(),
                conn: 1,
                key_run: 0,
            })
            .collect();
        let mut out = Vec::new();
        coalesce(&frames, LIMITS, &mut out);
        out
    }

    const LIMITS: Limits = Limits {
        max_logs: 50,
        max_bytes: 1 << 20,
    };

    /// A spooler on a new spool in `dir`, and its metrics.
    fn spooler_in(dir: &std::path::Path) -> (Spooler, std::sync::Arc<Metrics>) {
        let metrics = Metrics::new(&Registry::new()).unwrap();
        let (spool, _) = Spool::open(SpoolConfig::new(dir, 1 << 20, Fsync::Interval)).unwrap();
        (Spooler::new(spool, LIMITS, &metrics), metrics)
    }

    #[test]
    fn replayed_logs_count_even_when_the_spool_cannot_record_their_acknowledgement() {
        // A full disk: saving how far records were acknowledged fails (here its
        // temporary file's name is a directory's). The records were delivered, and
        // leave the spool, so logs_replayed_total counts them.
        let dir = tempfile::tempdir().unwrap();
        let (mut spooler, metrics) = spooler_in(dir.path());
        for out in &requests() {
            assert!(spooler.append(out, &metrics));
        }
        std::fs::create_dir(dir.path().join("state.tmp")).unwrap();
        while let Peeked::Record(replay) = spooler.peek(&metrics) {
            settle_all(&mut spooler, &replay, &metrics);
        }
        assert_eq!(metrics.spool.logs_replayed.get(), 120);
        assert_eq!(
            (metrics.spool.logs.get(), metrics.spool.bytes.get()),
            (0, 0)
        );
    }

    #[test]
    fn a_spooled_request_comes_back_with_its_frame_ends_and_its_replayed_logs_count() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spooler, metrics) = spooler_in(dir.path());
        let sent = requests();
        assert!(sent.len() >= 3 && sent.iter().any(|o| o.frame_ends.is_empty()));
        for out in &sent {
            assert!(spooler.append(out, &metrics));
        }
        assert_eq!(metrics.spool.logs_spooled.get(), 120);
        assert_eq!(metrics.spool.logs.get(), 120);
        assert_eq!(metrics.spool.frames.get(), 2);
        for out in &sent {
            let Peeked::Record(replay) = spooler.peek(&metrics) else {
                panic!("a record is held");
            };
            assert_eq!(
                replay.records.len(),
                1,
                "a request of the limit's size alone"
            );
            assert_eq!(replay.outgoing()[0].request, out.request);
            assert_eq!(replay.outgoing()[0].frame_ends, out.frame_ends);
            settle_all(&mut spooler, &replay, &metrics);
        }
        assert!(matches!(spooler.peek(&metrics), Peeked::Empty));
        assert_eq!(metrics.spool.logs_replayed.get(), 120);
        assert_eq!(
            (metrics.spool.logs.get(), metrics.spool.bytes.get()),
            (0, 0)
        );
    }

    /// One request of one frame of `logs` logs of `session`, numbered from `first`,
    /// from a connection of its own (boundary writes one session a connection).
    fn small(session: &str, first: i32, logs: usize) -> Outgoing {
        let conn = session
            .bytes()
            .fold(7u32, |h, b| h.wrapping_mul(31) ^ u32::from(b));
        small_on(conn, session, first, logs)
    }

    /// The same from connection `conn`.
    fn small_on(conn: u32, session: &str, first: i32, logs: usize) -> Outgoing {
        let frame = QueuedFrame {
            frame: LogFrame::from_request(&workload::request(session, "p", first, logs)).unwrap(),
            conn,
            key_run: 0,
        };
        let mut out = Vec::new();
        coalesce(&[frame], LIMITS, &mut out);
        out.pop().unwrap()
    }

    /// Each request of the replay as sent: its session id and sequence numbers.
    fn decoded(replay: &Replay) -> Vec<(String, Vec<i32>)> {
        replay
            .outgoing()
            .iter()
            .map(|out| {
                let request = out.request.decode().unwrap();
                let seqs = request.logs.iter().map(|l| l.sequence_number).collect();
                (request.session_id, seqs)
            })
            .collect()
    }

    fn session(name: &str, seqs: std::ops::Range<i32>) -> (String, Vec<i32>) {
        (name.to_owned(), seqs.collect())
    }

    /// Every request of `replay` delivered.
    fn settle_all(spooler: &mut Spooler, replay: &Replay, metrics: &Metrics) {
        let settled: Vec<u64> = replay
            .outgoing()
            .iter()
            .map(|o| u64::from(o.request.logs))
            .collect();
        spooler.settle(replay, &settled, settled.iter().sum(), metrics);
    }

    fn next_replay(spooler: &mut Spooler, metrics: &Metrics) -> Replay {
        match spooler.peek(metrics) {
            Peeked::Record(replay) => replay,
            other => panic!("records are held: {other:?}"),
        }
    }

    /// Live traffic spooled during an outage comes in requests of a few logs (cut
    /// every `--batch-linger`); replayed one record a round trip, a workspace writing
    /// faster than that never saw its backlog shrink (found by an operator review).
    #[test]
    fn small_records_of_one_session_are_replayed_merged_within_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spooler, metrics) = spooler_in(dir.path());
        for i in 0..12 {
            assert!(spooler.append(&small("s", i * 5, 5), &metrics));
        }
        let replay = next_replay(&mut spooler, &metrics);
        assert_eq!(replay.records.len(), 10, "50 logs: the limit");
        assert_eq!(decoded(&replay), [session("s", 0..50)]);
        let out = &replay.outgoing()[0];
        assert_eq!(
            out.frame_ends,
            (1..=10).map(|i| i * 5).collect::<Vec<u32>>()
        );
        assert_eq!((out.request.logs, out.request.frames), (50, 10));
        assert_eq!(
            out.request.records_end,
            Some(batch::records_end(&out.request.bytes))
        );
        settle_all(&mut spooler, &replay, &metrics);
        assert_eq!(metrics.spool.logs.get(), 10);
        let rest = next_replay(&mut spooler, &metrics);
        assert_eq!(decoded(&rest), [session("s", 50..60)]);
        settle_all(&mut spooler, &rest, &metrics);
        assert!(matches!(spooler.peek(&metrics), Peeked::Empty));
        assert_eq!(metrics.spool.logs_replayed.get(), 60);
        assert_eq!(metrics.spool.frames.get(), 0);
    }

    /// Two sessions' requests spooled in turn (two connections) are replayed as one
    /// request each, each session's logs in order.
    #[test]
    fn interleaved_sessions_are_replayed_as_one_request_each_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spooler, metrics) = spooler_in(dir.path());
        for i in 0..6 {
            assert!(spooler.append(&small("s", i * 5, 5), &metrics));
            assert!(spooler.append(&small("t", i * 5, 5), &metrics));
        }
        let replay = next_replay(&mut spooler, &metrics);
        assert_eq!(replay.records.len(), 12);
        assert_eq!(decoded(&replay), [session("s", 0..30), session("t", 0..30)]);
        settle_all(&mut spooler, &replay, &metrics);
        assert!(matches!(spooler.peek(&metrics), Peeked::Empty));
        assert_eq!(metrics.spool.logs_replayed.get(), 60);
        assert_eq!(
            (metrics.spool.logs.get(), metrics.spool.frames.get()),
            (0, 0)
        );
    }

    /// One connection that sends session s, then t, then s again: a replay must not
    /// send the second s record ahead of t (found by a review of 38614fb, which
    /// merged every record of a session into one request).
    #[test]
    fn a_replay_keeps_one_connections_order_across_its_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spooler, metrics) = spooler_in(dir.path());
        for out in [
            small_on(1, "s", 0, 5),
            small_on(1, "t", 100, 5),
            small_on(1, "s", 5, 5),
            small_on(2, "u", 0, 5),
            small_on(1, "t", 105, 5),
            small_on(2, "u", 5, 5),
        ] {
            assert!(spooler.append(&out, &metrics));
        }
        let replay = next_replay(&mut spooler, &metrics);
        // u (another connection) merges past them; connection 1 keeps its order.
        assert_eq!(
            decoded(&replay),
            [
                session("s", 0..5),
                session("t", 100..105),
                session("s", 5..10),
                session("u", 0..10),
            ]
            .into_iter()
            .chain([session("t", 105..110)])
            .collect::<Vec<_>>()
        );
        settle_all(&mut spooler, &replay, &metrics);
        assert!(matches!(spooler.peek(&metrics), Peeked::Empty));
    }

    /// A record written without its connections (by an earlier version) is taken to
    /// share one with every record: nothing is merged past it.
    #[test]
    fn a_record_without_its_connections_is_not_overtaken() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spooler, metrics) = spooler_in(dir.path());
        let mut old = small("t", 0, 5);
        old.order.conns.clear();
        for out in [small("s", 0, 5), old, small("s", 5, 5)] {
            assert!(spooler.append(&out, &metrics));
        }
        let replay = next_replay(&mut spooler, &metrics);
        assert_eq!(
            decoded(&replay),
            [session("s", 0..5), session("t", 0..5), session("s", 5..10)]
        );
    }

    /// A replay ends before a record whose session's request is full, or that would
    /// need more requests than a replay sends.
    #[test]
    fn a_replay_ends_at_the_first_record_it_cannot_take() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spooler, metrics) = spooler_in(dir.path());
        // s fills its request (50 logs) with its 10th record; the 11th waits, and t
        // behind it too.
        for i in 0..11 {
            assert!(spooler.append(&small("s", i * 5, 5), &metrics));
        }
        assert!(spooler.append(&small("t", 0, 5), &metrics));
        let replay = next_replay(&mut spooler, &metrics);
        assert_eq!(decoded(&replay), [session("s", 0..50)]);
        settle_all(&mut spooler, &replay, &metrics);
        let replay = next_replay(&mut spooler, &metrics);
        assert_eq!(decoded(&replay), [session("s", 50..55), session("t", 0..5)]);
        settle_all(&mut spooler, &replay, &metrics);
        // More sessions than a replay's requests.
        let names: Vec<String> = (0..=REPLAY_REQUESTS).map(|i| format!("n{i}")).collect();
        for name in &names {
            assert!(spooler.append(&small(name, 0, 5), &metrics));
        }
        let replay = next_replay(&mut spooler, &metrics);
        assert_eq!(replay.requests.len(), REPLAY_REQUESTS);
        settle_all(&mut spooler, &replay, &metrics);
        let replay = next_replay(&mut spooler, &metrics);
        assert_eq!(decoded(&replay), [session(&names[REPLAY_REQUESTS], 0..5)]);
    }

    /// A replay stopped part-way: what it settled of each record is kept, the
    /// records settled whole are not sent again, and the spool's counts hold exactly
    /// what is left, even where a later record was settled before an earlier one.
    #[test]
    fn a_replay_stopped_part_way_sends_only_what_it_left_of_each_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spooler, metrics) = spooler_in(dir.path());
        for i in 0..3 {
            assert!(spooler.append(&small("s", i * 5, 5), &metrics));
            assert!(spooler.append(&small("t", i * 5, 5), &metrics));
        }
        let replay = next_replay(&mut spooler, &metrics);
        assert_eq!(decoded(&replay), [session("s", 0..15), session("t", 0..15)]);
        // s's request settled through its 7th log (s0 whole, 2 logs of s1); t's not
        // sent.
        spooler.settle(&replay, &[7], 7, &metrics);
        assert_eq!(metrics.spool.logs_replayed.get(), 7);
        assert_eq!(metrics.spool.logs.get(), 23);
        let replay = next_replay(&mut spooler, &metrics);
        assert_eq!(decoded(&replay), [session("t", 0..15), session("s", 7..15)]);
        // 8 of t (t0, 3 of t1) and all 8 left of s (s1's 3, s2): s2 is settled
        // before t1, which is older.
        spooler.settle(&replay, &[8, 8], 16, &metrics);
        assert_eq!(metrics.spool.logs.get(), 7, "2 of t1 and t2");
        assert_eq!(metrics.spool.frames.get(), 2);
        let replay = next_replay(&mut spooler, &metrics);
        assert_eq!(decoded(&replay), [session("t", 8..15)]);
        settle_all(&mut spooler, &replay, &metrics);
        assert!(matches!(spooler.peek(&metrics), Peeked::Empty));
        assert_eq!(metrics.spool.logs_replayed.get(), 30);
        assert_eq!(
            (metrics.spool.logs.get(), metrics.spool.bytes.get()),
            (0, 0)
        );
    }

    #[test]
    fn a_request_that_does_not_fit_is_counted_spool_full_in_frames_and_logs() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new(&Registry::new()).unwrap();
        let sent = requests();
        let mut payload = Vec::new();
        encode_payload(&sent[0], &mut payload);
        let first = (crate::spool::HEADER_LEN + payload.len()) as u64;
        let (spool, _) = Spool::open(SpoolConfig::new(dir.path(), first, Fsync::Interval)).unwrap();
        let limits = Limits {
            max_logs: 50,
            max_bytes: 1 << 20,
        };
        let mut spooler = Spooler::new(spool, limits, &metrics);
        assert!(spooler.append(&sent[0], &metrics), "exactly the limit fits");
        assert!(!spooler.append(&sent[1], &metrics));
        assert_eq!(
            metrics.logs_dropped_for(LogDropReason::SpoolFull),
            u64::from(sent[1].request.logs)
        );
        assert_eq!(
            metrics.batches_dropped_for(crate::metrics::BatchDropReason::SpoolFull),
            u64::from(sent[1].request.frames)
        );
        assert_eq!(metrics.spool.bytes.get() as u64, first);
    }
}
