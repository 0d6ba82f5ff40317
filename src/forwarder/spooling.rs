//! The forwarder's side of the disk spool: writes requests it cannot deliver now,
//! reads back the oldest for replay, acknowledges what the destination took, and
//! keeps the spool's metrics current. Every spool outcome is counted here.

use std::time::Instant;

use crate::events::{
    ForwardDropReason, ForwardDropped, InternalEvent, SpoolDirRebuilt, SpoolIoFailed,
    SpoolOccupancy, SpoolOp, SpoolReplayed, Spooled,
};
use crate::metrics::Metrics;
use crate::reporter::EncodedRequest;
use crate::spool::{AppendError, Counts, Fsync, Spool};

use super::batch::{self, Limits, OrderKey, Outgoing};
use super::split;

/// A request read back from the spool: one record, or consecutive records of one
/// session id and process name merged into one request within the limits, and the
/// records to acknowledge once the destination took it.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The records merged, oldest first (the first is the spool's oldest).
    pub records: Vec<Part>,
    pub request: EncodedRequest,
    /// Where the request's frames end, as in [`Outgoing::frame_ends`].
    pub frame_ends: Vec<u32>,
    /// The frames and logs at the record's start settled by an earlier replay
    /// stopped part-way: not sent again.
    pub done: Counts,
}

/// One spooled record inside a [`Replay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub seq: u64,
    pub frames: u32,
    pub logs: u32,
}

/// What [`Spooler::peek`] found.
#[derive(Debug)]
pub enum Peeked {
    /// The oldest record, to replay.
    Record(Replay),
    /// Nothing held: delivery goes direct again.
    Empty,
    /// Records are held but the oldest could not be read (counted as a
    /// `SpoolIoFailed`): try again later, still behind the spool so that nothing
    /// newer overtakes what it holds.
    Later,
}

impl Replay {
    /// The request as the delivery loop sends it (it may be split like any other):
    /// the record after what an earlier replay settled of it.
    pub fn outgoing(&self) -> Outgoing {
        let whole = self.whole();
        match split::at(&whole, self.done.logs as usize) {
            Some((_, rest)) => rest,
            None => whole,
        }
    }

    /// The whole record's request.
    fn whole(&self) -> Outgoing {
        Outgoing {
            request: self.request.clone(),
            // Replays go one at a time: nothing to order against.
            order: OrderKey {
                conns: Vec::new(),
                session: 0,
            },
            frame_ends: self.frame_ends.clone(),
        }
    }
}

/// A record's payload: the request's `frame_ends` (one little-endian u32 per frame,
/// `frames` of them), then the encoded request.
fn encode_payload(out: &Outgoing, buf: &mut Vec<u8>) {
    buf.clear();
    buf.reserve(out.frame_ends.len() * 4 + out.request.bytes.len());
    for end in &out.frame_ends {
        buf.extend_from_slice(&end.to_le_bytes());
    }
    buf.extend_from_slice(&out.request.bytes);
}

/// Splits a record's payload back; `None` if it is too short for its frame count.
fn decode_payload(
    frames: u32,
    logs: u32,
    payload: bytes::Bytes,
) -> Option<(Vec<u32>, EncodedRequest)> {
    let prefix = frames as usize * 4;
    if payload.len() < prefix {
        return None;
    }
    let frame_ends = payload[..prefix]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    let request = EncodedRequest {
        records_end: Some(batch::records_end(&payload[prefix..])),
        bytes: payload.slice(prefix..),
        logs,
        frames,
    };
    Some((frame_ends, request))
}

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
    /// How frames still in the ring at shutdown are merged before they are written.
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
            Err(AppendError::Full) => false,
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
            let Some((frame_ends, request)) =
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
                }],
                request,
                frame_ends,
                done: record.done,
            };
            self.merge_following(&mut replay);
            return Peeked::Record(replay);
        }
    }

    /// Merges into `replay` the records after it of the same session id and process
    /// name, while the request stays within the limits: a backlog spooled in small
    /// requests (live traffic cut every `--batch-linger`) is replayed as it would have
    /// been sent, not one small record a round trip, which a busy workspace outruns.
    /// Protobuf merges repeated fields, so the records' log fields follow one another
    /// and the session id and process name close the request once.
    fn merge_following(&mut self, replay: &mut Replay) {
        let Some(first_end) = replay.request.records_end.map(|end| end as usize) else {
            return;
        };
        let trailer = replay.request.bytes.slice(first_end..);
        let mut merged: Option<bytes::BytesMut> = None;
        let mut logs = replay.request.logs as usize;
        let mut len = replay.request.bytes.len();
        while logs < self.limits.max_logs {
            let Some(next) = self.spool.peek_next() else {
                break;
            };
            let (seq, frames) = (next.seq, next.frames);
            let decoded = decode_payload(next.frames, next.logs, next.payload);
            let Some((ends, request)) = decoded.filter(|(_, request)| {
                let end = request.records_end.unwrap_or(0) as usize;
                request.bytes[end..] == trailer[..]
                    && logs + request.logs as usize <= self.limits.max_logs
                    && len + end <= self.limits.max_bytes
            }) else {
                // Read but not merged: the replay stops before it.
                self.spool.unpeek_last();
                break;
            };
            let end = request.records_end.unwrap_or(0) as usize;
            merged
                .get_or_insert_with(|| bytes::BytesMut::from(&replay.request.bytes[..first_end]))
                .extend_from_slice(&request.bytes[..end]);
            replay
                .frame_ends
                .extend(ends.iter().map(|e| e + logs as u32));
            replay.records.push(Part {
                seq,
                frames,
                logs: request.logs,
            });
            replay.request.frames += frames;
            logs += request.logs as usize;
            len += end;
        }
        if let Some(mut bytes) = merged {
            let records_end = bytes.len() as u32;
            bytes.extend_from_slice(&trailer);
            replay.request = EncodedRequest {
                bytes: bytes.freeze(),
                logs: logs as u32,
                frames: replay.request.frames,
                records_end: Some(records_end),
            };
        }
    }

    /// Every part of `replay` was settled: `delivered` of its logs were delivered,
    /// the rest refused for good (already counted as `forward_failed`). Its records
    /// leave the spool.
    pub fn ack(&mut self, replay: &Replay, delivered: u64, metrics: &Metrics) {
        for part in &replay.records {
            self.ack_record(part.seq, metrics);
        }
        if delivered > 0 {
            SpoolReplayed { logs: delivered }.emit(metrics);
        }
        self.occupancy(metrics);
    }

    /// The oldest record, `seq`, leaves the spool.
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

    /// A replay of `replay` was stopped after settling the first `settled` logs of
    /// what it sent ([`Replay::outgoing`]), `delivered` of them delivered (the rest
    /// refused for good, already counted as `forward_failed`): the records wholly
    /// settled leave the spool, the settled part of the next leaves its counts, and
    /// the next replay resumes after them.
    pub fn ack_part(&mut self, replay: &Replay, settled: u64, delivered: u64, metrics: &Metrics) {
        if settled == 0 {
            return;
        }
        let mut logs = replay.done.logs + settled;
        let whole = replay.whole();
        // Its frames as the parts sent counted them: each with the part holding its
        // last log.
        let Some((head, _)) = split::at(&whole, logs as usize) else {
            // Settled to the end: the delivery loop acknowledges the whole replay.
            return;
        };
        let mut frames = u64::from(head.request.frames);
        for part in &replay.records {
            if logs < u64::from(part.logs) {
                if logs > 0 && !self.spool.ack_part(part.seq, Counts { frames, logs }) {
                    tracing::error!(
                        seq = part.seq,
                        "acknowledged part of a record that is not the spool's oldest"
                    );
                }
                break;
            }
            self.ack_record(part.seq, metrics);
            logs -= u64::from(part.logs);
            frames -= u64::from(part.frames);
        }
        if delivered > 0 {
            SpoolReplayed { logs: delivered }.emit(metrics);
        }
        self.occupancy(metrics);
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
            let logs = u64::from(replay.outgoing().request.logs);
            spooler.ack(&replay, logs, &metrics);
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
            assert_eq!(replay.outgoing().request, out.request);
            assert_eq!(replay.frame_ends, out.frame_ends);
            spooler.ack(&replay, u64::from(out.request.logs), &metrics);
        }
        assert!(matches!(spooler.peek(&metrics), Peeked::Empty));
        assert_eq!(metrics.spool.logs_replayed.get(), 120);
        assert_eq!(
            (metrics.spool.logs.get(), metrics.spool.bytes.get()),
            (0, 0)
        );
    }

    /// One request of one frame of `logs` logs of `session`, numbered from `first`.
    fn small(session: &str, first: i32, logs: usize) -> Outgoing {
        let frame = QueuedFrame {
            frame: LogFrame::from_request(&workload::request(session, "p", first, logs)).unwrap(),
            conn: 1,
            key_run: 0,
        };
        let mut out = Vec::new();
        coalesce(&[frame], LIMITS, &mut out);
        out.pop().unwrap()
    }

    fn decoded(replay: &Replay) -> (String, Vec<i32>) {
        let request = replay.outgoing().request.decode().unwrap();
        let seqs = request.logs.iter().map(|l| l.sequence_number).collect();
        (request.session_id, seqs)
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
        let Peeked::Record(replay) = spooler.peek(&metrics) else {
            panic!("records are held");
        };
        assert_eq!(replay.records.len(), 10, "50 logs: the limit");
        assert_eq!(decoded(&replay), ("s".to_owned(), (0..50).collect()));
        assert_eq!(
            replay.frame_ends,
            (1..=10).map(|i| i * 5).collect::<Vec<u32>>()
        );
        let out = replay.outgoing();
        assert_eq!((out.request.logs, out.request.frames), (50, 10));
        assert_eq!(
            out.request.records_end,
            Some(batch::records_end(&out.request.bytes))
        );
        spooler.ack(&replay, 50, &metrics);
        assert_eq!(metrics.spool.logs.get(), 10);
        let Peeked::Record(rest) = spooler.peek(&metrics) else {
            panic!("two records are left");
        };
        assert_eq!(decoded(&rest), ("s".to_owned(), (50..60).collect()));
        spooler.ack(&rest, 10, &metrics);
        assert!(matches!(spooler.peek(&metrics), Peeked::Empty));
        assert_eq!(metrics.spool.logs_replayed.get(), 60);
        assert_eq!(metrics.spool.frames.get(), 0);
    }

    #[test]
    fn records_of_another_session_are_not_merged_and_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spooler, metrics) = spooler_in(dir.path());
        for out in [
            small("s", 0, 5),
            small("s", 5, 5),
            small("t", 0, 5),
            small("s", 10, 5),
        ] {
            assert!(spooler.append(&out, &metrics));
        }
        let mut replays = Vec::new();
        while let Peeked::Record(replay) = spooler.peek(&metrics) {
            replays.push(decoded(&replay));
            spooler.ack(&replay, 5, &metrics);
        }
        assert_eq!(
            replays,
            [
                ("s".to_owned(), (0..10).collect()),
                ("t".to_owned(), (0..5).collect()),
                ("s".to_owned(), (10..15).collect()),
            ]
        );
    }

    #[test]
    fn a_merged_replay_stopped_part_way_acknowledges_the_records_it_settled_and_resumes_inside_the_next(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut spooler, metrics) = spooler_in(dir.path());
        for i in 0..4 {
            assert!(spooler.append(&small("s", i * 5, 5), &metrics));
        }
        let Peeked::Record(replay) = spooler.peek(&metrics) else {
            panic!("records are held");
        };
        assert_eq!(replay.records.len(), 4);
        // 12 logs settled: two records whole, two logs of the third.
        spooler.ack_part(&replay, 12, 12, &metrics);
        assert_eq!(metrics.spool.logs.get(), 8);
        assert_eq!(metrics.spool.frames.get(), 2);
        let Peeked::Record(rest) = spooler.peek(&metrics) else {
            panic!("two records are left");
        };
        assert_eq!(rest.records.len(), 2);
        assert_eq!(decoded(&rest), ("s".to_owned(), (12..20).collect()));
        spooler.ack(&rest, 8, &metrics);
        assert!(matches!(spooler.peek(&metrics), Peeked::Empty));
        assert_eq!(metrics.spool.logs_replayed.get(), 20);
        assert_eq!(
            (metrics.spool.logs.get(), metrics.spool.frames.get()),
            (0, 0)
        );
    }

    #[test]
    fn a_request_that_does_not_fit_is_counted_spool_full_in_frames_and_logs() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new(&Registry::new()).unwrap();
        let sent = requests();
        let first = (crate::spool::HEADER_LEN
            + sent[0].frame_ends.len() * 4
            + sent[0].request.bytes.len()) as u64;
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
