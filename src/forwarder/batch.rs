//! Coalescing: merges drained frames into as few requests as the limits allow,
//! only frames of the same session and process, keeping each connection's order.
//! A frame over a limit on its own is cut at log boundaries into parts that fit.
//! Limits hold for the whole encoded request, session id and process name included.

use std::hash::{Hash, Hasher};
use std::ops::Range;

use bytes::{BufMut, BytesMut};

use crate::intake::QueuedFrame;
use crate::reporter::EncodedRequest;

/// Field 1 (`logs`), field 2 (`session_id`) and field 3 (`confined_process_name`),
/// wire type 2.
pub(super) const LOGS_KEY: u8 = (1 << 3) | 2;
const SESSION_ID_KEY: u8 = (2 << 3) | 2;
const PROCESS_NAME_KEY: u8 = (3 << 3) | 2;

/// Per-request limits, both on the encoded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most logs in one request.
    pub max_logs: usize,
    /// Most encoded bytes in one request: log records, session id and process name.
    /// Only a request of a single log may be over it (when that log with its session
    /// id and process name is); it is never over one frame (32 KiB).
    pub max_bytes: usize,
}

impl Limits {
    /// The tighter of the two, limit by limit.
    pub fn min(self, other: Limits) -> Limits {
        Limits {
            max_logs: self.max_logs.min(other.max_logs),
            max_bytes: self.max_bytes.min(other.max_bytes),
        }
    }
}

/// A request ready to deliver and what orders it against the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub request: EncodedRequest,
    pub order: OrderKey,
    /// Where received frames end inside the request: for each frame whose last log
    /// it carries, the number of the request's logs up to and including that log
    /// (ascending). Its length is `request.frames`. A frame cut across requests is
    /// counted (forwarded or dropped) with the request carrying its last log; the
    /// others carry its logs but not the frame.
    pub frame_ends: Vec<u32>,
}

/// What a request's logs must stay in order with: two requests may be in flight at
/// once only if they share no connection and not their session and process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderKey {
    /// Connections whose frames the request carries, sorted, without repeats.
    pub conns: Vec<u32>,
    /// Hash of its session id and process name.
    pub session: u64,
}

impl OrderKey {
    /// True when a request with this key must wait while one with `other` is in
    /// flight (a hash collision only costs concurrency).
    pub fn conflicts(&self, other: &OrderKey) -> bool {
        self.session == other.session
            || self
                .conns
                .iter()
                .any(|c| other.conns.binary_search(c).is_ok())
    }
}

/// A run of one frame's log records: all of them, or one part of a frame cut
/// because it was over a limit on its own.
#[derive(Debug, Clone)]
struct Piece {
    /// Index of the frame in the drained slice.
    frame: usize,
    /// Byte range of the records in the frame's `encoded_logs`.
    records: Range<usize>,
    logs: usize,
    /// Whether it holds the frame's last log.
    ends_frame: bool,
}

/// One request under construction: its pieces and its running totals.
struct Group {
    pieces: Vec<Piece>,
    logs: usize,
    /// Bytes of log records (the session id and process name come on top).
    bytes: usize,
    /// False once the group may take no more frames (limit reached, or a later
    /// group already holds a frame of a connection that would join it).
    open: bool,
}

/// Splits `frames` (drain order) into requests and encodes them, oldest group first.
///
/// A frame joins the newest open group of its session and process unless that
/// would put it ahead of an earlier frame of its own connection, or overflow the
/// limits; then it starts a new group. A frame over a limit by itself is first cut
/// at log boundaries into parts that fit, which join groups in order like frames.
/// Groups are emitted in creation order, so every connection's logs reach the
/// reporter in the order it sent them.
pub fn coalesce(frames: &[QueuedFrame], limits: Limits, out: &mut Vec<Outgoing>) {
    let groups = group(frames, limits);
    out.extend(groups.groups.iter().map(|g| encode(frames, g)));
}

/// How much a drain pass may keep back for the next one ([`coalesce_holding`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldCap {
    /// Most frames kept back.
    pub frames: usize,
    /// Most bytes of log records kept back.
    pub bytes: usize,
}

/// Like [`coalesce`], but keeps back the requests that are under both limits and
/// still open to more frames of their session, so that the next pass fills them
/// instead of each pass ending in a part-full request per session (with eight
/// sessions and passes of 4000 logs, a quarter of the calls carried under 1000 logs).
///
/// Encodes the other requests into `out` and returns the indices (ascending, that is
/// in drain order) of the frames kept back; the caller drains them again, first, in
/// the next pass. To keep every connection's order, a request after a kept one that
/// carries frames of the same connection is kept too. Nothing is kept back (every
/// request is encoded, as by [`coalesce`]) when the kept frames would be over `cap`,
/// or when a kept request would carry part of a frame cut across requests: that
/// frame's other part is sent now and would be sent again.
pub fn coalesce_holding(
    frames: &[QueuedFrame],
    limits: Limits,
    cap: HoldCap,
    out: &mut Vec<Outgoing>,
) -> Vec<usize> {
    let groups = group(frames, limits);
    let held = held_groups(frames, &groups, limits, cap);
    let mut kept = Vec::new();
    for (g, group) in groups.groups.iter().enumerate() {
        if held[g] {
            kept.extend(group.pieces.iter().map(|p| p.frame));
        } else {
            out.push(encode(frames, group));
        }
    }
    kept.sort_unstable();
    kept
}

/// Which of `groups` [`coalesce_holding`] keeps back: none, or the part-full open
/// ones and, after each, those sharing one of its connections.
fn held_groups(
    frames: &[QueuedFrame],
    groups: &Groups<'_>,
    limits: Limits,
    cap: HoldCap,
) -> Vec<bool> {
    let mut held = vec![false; groups.groups.len()];
    let mut held_conns: Vec<u32> = Vec::new();
    let (mut held_frames, mut held_bytes) = (0usize, 0usize);
    for (g, group) in groups.groups.iter().enumerate() {
        let (session, process) = frames[group.pieces[0].frame].frame.request_key();
        let part_full = group.open
            && group.logs < limits.max_logs
            && trailer_len(session, process) + group.bytes < limits.max_bytes;
        let follows_held = group
            .pieces
            .iter()
            .any(|p| held_conns.contains(&frames[p.frame].conn));
        if !(part_full || follows_held) {
            continue;
        }
        let whole_frames = group
            .pieces
            .iter()
            .all(|p| p.ends_frame && p.records.start == 0);
        held_frames += group.pieces.len();
        held_bytes += group.bytes;
        if !whole_frames || held_frames > cap.frames || held_bytes > cap.bytes {
            return vec![false; groups.groups.len()];
        }
        held[g] = true;
        for piece in &group.pieces {
            let conn = frames[piece.frame].conn;
            if !held_conns.contains(&conn) {
                held_conns.push(conn);
            }
        }
    }
    held
}

/// Places every frame of `frames` (drain order) into groups, as [`coalesce`] describes.
fn group(frames: &[QueuedFrame], limits: Limits) -> Groups<'_> {
    let mut groups = Groups {
        frames,
        limits,
        groups: Vec::new(),
        conn_group: Vec::new(),
    };
    for (i, queued) in frames.iter().enumerate() {
        let frame = &queued.frame;
        let (session, process) = frame.request_key();
        let trailer = trailer_len(session, process);
        let records = frame.encoded_logs();
        let count = frame.log_count() as usize;
        if count <= limits.max_logs && trailer + records.len() <= limits.max_bytes {
            groups.place(Piece {
                frame: i,
                records: 0..records.len(),
                logs: count,
                ends_frame: true,
            });
            continue;
        }
        // Over a limit alone: cut before the record that would overflow a part.
        let (mut start, mut at, mut logs) = (0, 0, 0);
        while at < records.len() {
            let len = first_record_len(&records[at..]);
            if logs > 0
                && (logs >= limits.max_logs || trailer + (at + len - start) > limits.max_bytes)
            {
                groups.place(Piece {
                    frame: i,
                    records: start..at,
                    logs,
                    ends_frame: false,
                });
                (start, logs) = (at, 0);
            }
            at += len;
            logs += 1;
        }
        groups.place(Piece {
            frame: i,
            records: start..at,
            logs,
            ends_frame: true,
        });
    }
    groups
}

/// The groups of one drain and the newest group of each connection seen so far.
struct Groups<'a> {
    frames: &'a [QueuedFrame],
    limits: Limits,
    groups: Vec<Group>,
    /// (conn, group index, key run of the connection's last frame in it).
    conn_group: Vec<(u32, usize, u64)>,
}

impl Groups<'_> {
    fn place(&mut self, piece: Piece) {
        let frames = self.frames;
        let queued = &frames[piece.frame];
        let key = queued.frame.request_key();
        let trailer = trailer_len(key.0, key.1);
        let bytes = piece.records.len();
        let floor = self
            .conn_group
            .iter()
            .find(|(c, _, _)| *c == queued.conn)
            .map(|&(_, g, run)| (g, run));
        // At most one group of a session and process is open at a time (a new one is
        // only started when none is, or after closing it), so when the connection's
        // newest group is open and of this key it is the one. It is of this key when
        // the connection's last frame in it is of the same key run (no bytes read, where
        // comparing them missed the cache: boundary writes one session per connection),
        // or when the keys compare equal.
        let key_of = |g: &Group| frames[g.pieces[0].frame].frame.request_key();
        let same_run = |run: u64| run != 0 && run == queued.key_run;
        let joinable = match floor {
            Some((f, run))
                if self.groups[f].open && (same_run(run) || key_of(&self.groups[f]) == key) =>
            {
                Some(f)
            }
            _ => self.groups.iter().rposition(|g| g.open && key_of(g) == key),
        };
        let floor = floor.map(|(g, _)| g);
        let target = match joinable {
            Some(g)
                if floor.is_none_or(|f| f <= g)
                    && self.groups[g].logs + piece.logs <= self.limits.max_logs
                    && trailer + self.groups[g].bytes + bytes <= self.limits.max_bytes =>
            {
                g
            }
            other => {
                if let Some(g) = other {
                    self.groups[g].open = false;
                }
                self.groups.push(Group {
                    pieces: Vec::new(),
                    logs: 0,
                    bytes: 0,
                    open: true,
                });
                self.groups.len() - 1
            }
        };
        let conn = queued.conn;
        let group = &mut self.groups[target];
        group.logs += piece.logs;
        group.bytes += bytes;
        group.pieces.push(piece);
        match self.conn_group.iter_mut().find(|(c, _, _)| *c == conn) {
            Some(entry) => (entry.1, entry.2) = (target, queued.key_run),
            None => self.conn_group.push((conn, target, queued.key_run)),
        }
    }
}

/// Writes one request: every piece's log records, then the shared session id and
/// process name once.
fn encode(frames: &[QueuedFrame], group: &Group) -> Outgoing {
    let (session, process) = frames[group.pieces[0].frame].frame.request_key();
    let mut conns: Vec<u32> = group.pieces.iter().map(|p| frames[p.frame].conn).collect();
    conns.sort_unstable();
    conns.dedup();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (session, process).hash(&mut hasher);
    let mut buf = BytesMut::with_capacity(group.bytes + trailer_len(session, process));
    let mut frame_ends = Vec::new();
    let mut logs = 0u32;
    for piece in &group.pieces {
        buf.put_slice(&frames[piece.frame].frame.encoded_logs()[piece.records.clone()]);
        logs += piece.logs as u32;
        if piece.ends_frame {
            frame_ends.push(logs);
        }
    }
    let records_end = buf.len() as u32;
    put_string_field(&mut buf, SESSION_ID_KEY, session);
    put_string_field(&mut buf, PROCESS_NAME_KEY, process);
    Outgoing {
        request: EncodedRequest {
            bytes: buf.freeze(),
            logs,
            frames: frame_ends.len() as u32,
            records_end: Some(records_end),
        },
        order: OrderKey {
            conns,
            session: hasher.finish(),
        },
        frame_ends,
    }
}

/// Encoded bytes of the session id and process name fields (omitted when empty).
pub(super) fn trailer_len(session: &[u8], process: &[u8]) -> usize {
    let field = |value: &[u8]| {
        if value.is_empty() {
            0
        } else {
            1 + prost::encoding::encoded_len_varint(value.len() as u64) + value.len()
        }
    };
    field(session) + field(process)
}

/// Bytes of the first `logs` record (key, length, body) at the start of `records`,
/// which hold whole records as the codec validated them (a malformed rest counts
/// as one record, so a caller walking records always ends).
pub(super) fn first_record_len(records: &[u8]) -> usize {
    let Some(mut rest) = records.get(1..) else {
        return records.len();
    };
    let before = rest.len();
    match prost::encoding::decode_varint(&mut rest) {
        Ok(body) => (1 + before - rest.len())
            .saturating_add(usize::try_from(body).unwrap_or(usize::MAX))
            .min(records.len()),
        Err(_) => records.len(),
    }
}

/// Where the log records at the start of a request built by [`coalesce`] end: the
/// first byte that does not begin a field-1 record.
pub(super) fn records_end(request: &[u8]) -> u32 {
    let mut at = 0;
    while request.get(at) == Some(&LOGS_KEY) {
        at += first_record_len(&request[at..]);
    }
    at as u32
}

/// Appends a length-delimited field; proto3 omits empty strings.
pub(super) fn put_string_field(buf: &mut BytesMut, key: u8, value: &[u8]) {
    if value.is_empty() {
        return;
    }
    buf.put_u8(key);
    prost::encoding::encode_varint(value.len() as u64, buf);
    buf.put_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::LogFrame;
    use crate::proto::agent::ReportBoundaryLogsRequest;
    use crate::workload;
    use prost::Message as _;

    const LIMITS: Limits = Limits {
        max_logs: 1000,
        max_bytes: 1 << 20,
    };

    fn queued(session: &str, process: &str, first_seq: i32, logs: usize, conn: u32) -> QueuedFrame {
        let request = workload::request(session, process, first_seq, logs);
        // One key run per connection and key, as the intake numbers them.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (conn, session, process).hash(&mut hasher);
        QueuedFrame {
            frame: LogFrame::from_request(&request).unwrap(),
            conn,
            key_run: hasher.finish() | 1,
        }
    }

    fn coalesced(frames: &[QueuedFrame], limits: Limits) -> Vec<Outgoing> {
        let mut out = Vec::new();
        coalesce(frames, limits, &mut out);
        out
    }

    fn decode(out: &Outgoing) -> ReportBoundaryLogsRequest {
        out.request.decode().unwrap()
    }

    #[test]
    fn frames_of_one_session_and_process_merge_into_one_request_in_order() {
        let frames = [
            queued("s1", "codex", 0, 3, 1),
            queued("s2", "codex", 0, 2, 2),
            queued("s1", "codex", 3, 4, 1),
            queued("s1", "claude-code", 0, 1, 3),
        ];
        let out = coalesced(&frames, LIMITS);
        let requests: Vec<_> = out.iter().map(decode).collect();
        let keys: Vec<_> = requests
            .iter()
            .map(|r| {
                (
                    r.session_id.as_str(),
                    r.confined_process_name.as_str(),
                    r.logs.len(),
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("s1", "codex", 7),
                ("s2", "codex", 2),
                ("s1", "claude-code", 1)
            ]
        );
        let seqs: Vec<i32> = requests[0].logs.iter().map(|l| l.sequence_number).collect();
        assert_eq!(seqs, (0..7).collect::<Vec<_>>());
        assert_eq!((out[0].request.logs, out[0].request.frames), (7, 2));
        assert_eq!(out.iter().map(|r| r.request.logs).sum::<u32>(), 10);
        assert_eq!(out[0].order.conns, [1]);
        // s1/codex and s1/claude-code share no connection and differ in process.
        assert!(!out[0].order.conflicts(&out[2].order));
        assert!(!out[0].order.conflicts(&out[1].order));
    }

    #[test]
    fn a_connection_switching_sessions_joins_the_open_group_of_each_session() {
        // Connection 1 writes s1, s2, then s1 again. For its last frame the
        // connection's newest group (s2's) is not of the frame's key, so the groups'
        // keys are compared: s1's open group (which connection 2 joined too) is older
        // than connection 1's s2 frame, and joining it would reorder connection 1.
        let frames = [
            queued("s1", "codex", 0, 2, 1),
            queued("s1", "codex", 0, 3, 2),
            queued("s2", "codex", 0, 1, 1),
            queued("s1", "codex", 3, 1, 2),
            queued("s1", "codex", 2, 1, 1),
        ];
        let out = coalesced(&frames, LIMITS);
        let summary: Vec<_> = out
            .iter()
            .map(decode)
            .map(|r| (r.session_id, r.logs.len()))
            .collect();
        // So it starts a third group.
        assert_eq!(
            summary,
            [("s1".into(), 6), ("s2".into(), 1), ("s1".into(), 1)]
        );
    }

    #[test]
    fn records_end_is_where_the_session_id_and_process_name_begin() {
        let frames = [
            queued("s1", "codex", 0, 3, 1),
            queued("s2", "", 0, 2, 2),
            queued("", "codex", 0, 1, 3),
        ];
        let out = coalesced(&frames, LIMITS);
        assert_eq!(out.len(), 3);
        for o in &out {
            let bytes = &o.request.bytes;
            let end = o.request.records_end.expect("the forwarder's requests say") as usize;
            let records = ReportBoundaryLogsRequest::decode(&bytes[..end]).unwrap();
            let trailer = ReportBoundaryLogsRequest::decode(&bytes[end..]).unwrap();
            let whole = decode(o);
            assert_eq!(records.logs, whole.logs);
            assert!(trailer.logs.is_empty());
            assert_eq!(
                (trailer.session_id, trailer.confined_process_name),
                (whole.session_id, whole.confined_process_name)
            );
        }
    }

    #[test]
    fn requests_sharing_a_connection_or_a_session_conflict() {
        let frames = [
            queued("s1", "codex", 0, 2, 1),
            queued("s2", "codex", 0, 2, 1),
            queued("s3", "codex", 0, 2, 2),
            queued("s3", "codex", 2, 2, 3),
        ];
        let out = coalesced(&frames, LIMITS);
        assert_eq!(out.len(), 3);
        let keys: Vec<&OrderKey> = out.iter().map(|o| &o.order).collect();
        assert_eq!(keys[2].conns, [2, 3]);
        assert!(keys[0].conflicts(keys[1]), "one connection, two sessions");
        assert!(!keys[0].conflicts(keys[2]));
        assert!(!keys[1].conflicts(keys[2]));
        let other_conn_same_session = OrderKey {
            conns: vec![9],
            session: keys[2].session,
        };
        assert!(other_conn_same_session.conflicts(keys[2]));
    }

    #[test]
    fn a_full_request_starts_a_new_one() {
        let frames = [
            queued("s1", "codex", 0, 6, 1),
            queued("s1", "codex", 6, 6, 1),
        ];
        let limits = Limits {
            max_logs: 10,
            ..LIMITS
        };
        let out = coalesced(&frames, limits);
        let logs: Vec<u32> = out.iter().map(|r| r.request.logs).collect();
        assert_eq!(logs, [6, 6]);
        assert!(
            out[0].order.conflicts(&out[1].order),
            "same session and connection"
        );
        assert_eq!(decode(&out[1]).logs[0].sequence_number, 6);
    }

    /// A frame of `logs` logs carrying only their sequence numbers (5 bytes a record),
    /// so that thousands fit in one frame.
    fn tiny_logs(session: &str, first_seq: i32, logs: usize, conn: u32) -> QueuedFrame {
        let request = ReportBoundaryLogsRequest {
            logs: (0..logs)
                .map(|i| crate::proto::agent::BoundaryLog {
                    sequence_number: first_seq + 1000 + i as i32,
                    ..Default::default()
                })
                .collect(),
            session_id: session.to_owned(),
            confined_process_name: "codex".to_owned(),
        };
        QueuedFrame {
            frame: LogFrame::from_request(&request).unwrap(),
            conn,
            key_run: 0,
        }
    }

    fn seqs(out: &[Outgoing]) -> Vec<i32> {
        out.iter()
            .flat_map(|o| decode(o).logs)
            .map(|l| l.sequence_number)
            .collect()
    }

    #[test]
    fn max_bytes_counts_the_session_id_and_process_name() {
        // Long session id and process name, as in a hostile client's frames: the
        // requests must stay within max_bytes once they are added.
        let session = "s".repeat(12_000);
        let process = "p".repeat(4_000);
        let frames: Vec<QueuedFrame> = (0..40)
            .map(|i| {
                let mut request = workload::request(&session, &process, i * 60, 60);
                while request.encoded_len() > crate::codec::MAX_PAYLOAD_LEN {
                    request.logs.pop();
                }
                QueuedFrame {
                    frame: LogFrame::from_request(&request).unwrap(),
                    conn: 1,
                    key_run: 0,
                }
            })
            .collect();
        let limits = Limits {
            max_logs: 100_000,
            max_bytes: 100_000,
        };
        let out = coalesced(&frames, limits);
        for o in &out {
            assert!(
                o.request.bytes.len() <= limits.max_bytes,
                "a request of {} bytes is over {}",
                o.request.bytes.len(),
                limits.max_bytes
            );
            let decoded = decode(o);
            assert_eq!(
                (
                    decoded.session_id.len(),
                    decoded.confined_process_name.len()
                ),
                (12_000, 4_000)
            );
        }
        let sent: usize = frames.iter().map(|f| f.frame.log_count() as usize).sum();
        assert_eq!(
            out.iter().map(|o| o.request.logs as usize).sum::<usize>(),
            sent
        );
        assert_eq!(out.iter().map(|o| o.request.frames).sum::<u32>(), 40);
        assert!(
            out.len() < 40,
            "frames still coalesce: {} requests",
            out.len()
        );
    }

    #[test]
    fn a_frame_over_max_logs_is_cut_at_log_boundaries_in_order() {
        let frames = [tiny_logs("s1", 0, 5000, 1)];
        let limits = Limits {
            max_logs: 100,
            ..LIMITS
        };
        let out = coalesced(&frames, limits);
        assert_eq!(out.len(), 50);
        assert!(out.iter().all(|o| o.request.logs == 100));
        assert_eq!(seqs(&out), (1000..6000).collect::<Vec<_>>());
        // The frame counts once, with the part carrying its last log.
        let frames_per_request: Vec<u32> = out.iter().map(|o| o.request.frames).collect();
        assert_eq!(frames_per_request.iter().sum::<u32>(), 1);
        assert_eq!(out[49].frame_ends, [100]);
        assert!(out[..49].iter().all(|o| o.frame_ends.is_empty()));
        assert!(out[0].order.conflicts(&out[1].order));
    }

    #[test]
    fn a_frame_over_max_bytes_is_cut_into_parts_within_it() {
        let frame = queued("s1", "codex", 0, 100, 1);
        let total = frame.frame.encoded_request().len();
        let limits = Limits {
            max_logs: 1000,
            max_bytes: total / 3,
        };
        let out = coalesced(&[frame], limits);
        assert!(out.len() >= 3, "{} parts", out.len());
        for o in &out {
            assert!(o.request.bytes.len() <= limits.max_bytes);
            assert_eq!(decode(o).session_id, "s1");
        }
        assert_eq!(seqs(&out), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_single_log_over_max_bytes_still_goes_alone() {
        let frame = queued("s1", "codex", 0, 3, 1);
        let limits = Limits {
            max_logs: 1000,
            max_bytes: 10,
        };
        let out = coalesced(&[frame], limits);
        assert_eq!(
            out.iter().map(|o| o.request.logs).collect::<Vec<_>>(),
            [1, 1, 1]
        );
        assert_eq!(seqs(&out), [0, 1, 2]);
    }

    #[test]
    fn the_tail_of_a_cut_frame_coalesces_with_the_next_frame_and_counts_both() {
        let frames = [tiny_logs("s1", 0, 250, 1), tiny_logs("s1", 250, 30, 1)];
        let limits = Limits {
            max_logs: 100,
            ..LIMITS
        };
        let out = coalesced(&frames, limits);
        let shape: Vec<(u32, u32)> = out
            .iter()
            .map(|o| (o.request.logs, o.request.frames))
            .collect();
        assert_eq!(shape, [(100, 0), (100, 0), (80, 2)]);
        assert_eq!(out[2].frame_ends, [50, 80]);
        assert_eq!(seqs(&out), (1000..1280).collect::<Vec<_>>());
    }

    const NO_CAP: HoldCap = HoldCap {
        frames: usize::MAX,
        bytes: usize::MAX,
    };

    /// `frames` frames of 10 logs each of `session` on `conn`, sequence numbers from `first`.
    fn run_of(session: &str, conn: u32, first: i32, frames: usize) -> Vec<QueuedFrame> {
        (0..frames)
            .map(|i| queued(session, "codex", first + 10 * i as i32, 10, conn))
            .collect()
    }

    fn copy(q: &QueuedFrame) -> QueuedFrame {
        QueuedFrame {
            frame: q.frame.clone(),
            conn: q.conn,
            key_run: q.key_run,
        }
    }

    fn holding(
        frames: &[QueuedFrame],
        limits: Limits,
        cap: HoldCap,
    ) -> (Vec<Outgoing>, Vec<usize>) {
        let mut out = Vec::new();
        let kept = coalesce_holding(frames, limits, cap, &mut out);
        (out, kept)
    }

    #[test]
    fn a_full_pass_sends_full_requests_and_keeps_part_full_ones_for_the_next() {
        // Interleaved as a drain sees them: s1 on connection 1 (120 frames, 1200 logs)
        // and s2 on connection 2 (30 frames).
        let s1 = run_of("s1", 1, 0, 120);
        let s2 = run_of("s2", 2, 0, 30);
        let mut frames = Vec::new();
        for i in 0..120 {
            frames.push(copy(&s1[i]));
            if i < 30 {
                frames.push(copy(&s2[i]));
            }
        }
        let (out, kept) = holding(&frames, LIMITS, NO_CAP);
        assert_eq!(out.len(), 1, "only s1's full request goes now");
        assert_eq!(decode(&out[0]).session_id, "s1");
        assert_eq!((out[0].request.logs, out[0].request.frames), (1000, 100));
        assert_eq!(seqs(&out), (0..1000).collect::<Vec<_>>());
        // Kept: s1's last 20 frames and all of s2's, in drain order.
        let kept_frames: Vec<_> = kept.iter().map(|&i| &frames[i]).collect();
        assert_eq!(kept_frames.len(), 50);
        assert!(kept.windows(2).all(|w| w[0] < w[1]));
        let logs = |q: &&QueuedFrame| q.frame.log_count();
        assert_eq!(
            kept_frames
                .iter()
                .filter(|q| q.conn == 1)
                .map(logs)
                .sum::<u32>(),
            200
        );
        assert_eq!(
            kept_frames
                .iter()
                .filter(|q| q.conn == 2)
                .map(logs)
                .sum::<u32>(),
            300
        );

        // The next pass, the kept frames first: both sessions' requests fill up.
        let mut next: Vec<QueuedFrame> = kept.iter().map(|&i| copy(&frames[i])).collect();
        next.extend(run_of("s1", 1, 1200, 80));
        next.extend(run_of("s2", 2, 300, 70));
        let (out, kept) = holding(&next, LIMITS, NO_CAP);
        let shape: Vec<_> = out
            .iter()
            .map(|o| (decode(o).session_id, o.request.logs))
            .collect();
        // s2's kept frames were drained before s1's, so its request is the older one.
        assert_eq!(shape, [("s2".to_owned(), 1000), ("s1".to_owned(), 1000)]);
        assert_eq!(seqs(&out[1..]), (1000..2000).collect::<Vec<_>>());
        assert!(kept.is_empty());
    }

    #[test]
    fn a_request_after_a_kept_one_with_the_same_connection_is_kept_too() {
        // Connection 1 writes one s1 frame, then 101 frames of s2: s2's first 1000 logs
        // make a full request, but sending it now would put connection 1's s2 logs
        // ahead of its s1 log, which is kept back. Connection 2's full request goes.
        let mut frames = vec![queued("s1", "codex", 0, 10, 1)];
        frames.extend(run_of("s2", 1, 0, 101));
        frames.extend(run_of("s3", 2, 0, 100));
        let (out, kept) = holding(&frames, LIMITS, NO_CAP);
        let shape: Vec<_> = out
            .iter()
            .map(|o| (decode(o).session_id, o.request.logs))
            .collect();
        assert_eq!(shape, [("s3".to_owned(), 1000)]);
        assert_eq!(kept, (0..102).collect::<Vec<_>>());
    }

    #[test]
    fn over_the_cap_nothing_is_kept_back_and_every_request_is_sent() {
        let mut frames = run_of("s1", 1, 0, 130);
        frames.extend(run_of("s2", 2, 0, 30));
        let cap = HoldCap {
            frames: 59,
            bytes: usize::MAX,
        };
        let (out, kept) = holding(&frames, LIMITS, cap);
        assert!(kept.is_empty());
        assert_eq!(out, coalesced(&frames, LIMITS));
        let (_, kept) = holding(&frames, LIMITS, HoldCap { frames: 60, ..cap });
        assert_eq!(
            kept.len(),
            60,
            "at the cap, s1's 30 frames and s2's 30 are kept"
        );
        let bytes: usize = frames[100..]
            .iter()
            .map(|q| q.frame.encoded_logs().len())
            .sum();
        let by_bytes = HoldCap {
            frames: usize::MAX,
            bytes: bytes - 1,
        };
        assert!(holding(&frames, LIMITS, by_bytes).1.is_empty());
    }

    #[test]
    fn a_frame_cut_across_requests_is_never_kept_back_in_part() {
        // 250 logs at 100 a request: the frame's last part (50 logs) is part-full, but
        // keeping it back would send its first parts now and again with it.
        let frames = [tiny_logs("s1", 0, 250, 1)];
        let limits = Limits {
            max_logs: 100,
            ..LIMITS
        };
        let (out, kept) = holding(&frames, limits, NO_CAP);
        assert!(kept.is_empty());
        assert_eq!(out, coalesced(&frames, limits));
    }
}
