//! Coalescing: merges drained frames into as few requests as the limits allow,
//! only frames of the same session and process, keeping each connection's order.

use std::hash::{Hash, Hasher};

use bytes::{BufMut, BytesMut};

use crate::intake::QueuedFrame;
use crate::reporter::EncodedRequest;

/// Field 2 (`session_id`) and field 3 (`confined_process_name`), wire type 2.
const SESSION_ID_KEY: u8 = (2 << 3) | 2;
const PROCESS_NAME_KEY: u8 = (3 << 3) | 2;

/// Per-request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most logs in one request.
    pub max_logs: usize,
    /// Most encoded bytes in one request (frames over it alone still go, one a request).
    pub max_bytes: usize,
}

/// A request ready to deliver and what orders it against the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub request: EncodedRequest,
    pub order: OrderKey,
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

/// One request under construction: indices of its frames and its running totals.
struct Group {
    frames: Vec<usize>,
    logs: usize,
    bytes: usize,
    /// False once the group may take no more frames (limit reached, or a later
    /// group already holds a frame of a connection that would join it).
    open: bool,
}

/// Splits `frames` (drain order) into requests and encodes them, oldest group first.
///
/// A frame joins the newest open group of its session and process unless that
/// would put it ahead of an earlier frame of its own connection, or overflow the
/// limits; then it starts a new group. Groups are emitted in creation order, so
/// every connection's logs reach the reporter in the order it sent them.
pub fn coalesce(frames: &[QueuedFrame], limits: Limits, out: &mut Vec<Outgoing>) {
    let mut groups: Vec<Group> = Vec::new();
    // Newest group of each connection seen so far in this drain: (conn, group index).
    let mut conn_group: Vec<(u32, usize)> = Vec::new();

    for (i, queued) in frames.iter().enumerate() {
        let frame = &queued.frame;
        let logs = frame.log_count() as usize;
        let bytes = frame.encoded_logs().len();
        let floor = conn_group
            .iter()
            .find(|(c, _)| *c == queued.conn)
            .map(|&(_, g)| g);
        let key = frame.request_key();
        let joinable = groups
            .iter()
            .rposition(|g| g.open && frames[g.frames[0]].frame.request_key() == key);
        let target = match joinable {
            Some(g)
                if floor.is_none_or(|f| f <= g)
                    && groups[g].logs + logs <= limits.max_logs
                    && groups[g].bytes + bytes <= limits.max_bytes =>
            {
                g
            }
            other => {
                if let Some(g) = other {
                    groups[g].open = false;
                }
                groups.push(Group {
                    frames: Vec::new(),
                    logs: 0,
                    bytes: 0,
                    open: true,
                });
                groups.len() - 1
            }
        };
        let group = &mut groups[target];
        group.frames.push(i);
        group.logs += logs;
        group.bytes += bytes;
        match conn_group.iter_mut().find(|(c, _)| *c == queued.conn) {
            Some(entry) => entry.1 = target,
            None => conn_group.push((queued.conn, target)),
        }
    }

    out.extend(groups.iter().map(|g| encode(frames, g)));
}

/// Writes one request: every frame's log records, then the shared session id and
/// process name once.
fn encode(frames: &[QueuedFrame], group: &Group) -> Outgoing {
    let (session, process) = frames[group.frames[0]].frame.request_key();
    let mut conns: Vec<u32> = group.frames.iter().map(|&i| frames[i].conn).collect();
    conns.sort_unstable();
    conns.dedup();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (session, process).hash(&mut hasher);
    let mut buf = BytesMut::with_capacity(group.bytes + session.len() + process.len() + 12);
    for &i in &group.frames {
        buf.put_slice(frames[i].frame.encoded_logs());
    }
    put_string_field(&mut buf, SESSION_ID_KEY, session);
    put_string_field(&mut buf, PROCESS_NAME_KEY, process);
    Outgoing {
        request: EncodedRequest {
            bytes: buf.freeze(),
            logs: group.logs as u32,
            frames: group.frames.len() as u32,
        },
        order: OrderKey {
            conns,
            session: hasher.finish(),
        },
    }
}

/// Appends a length-delimited field; proto3 omits empty strings.
fn put_string_field(buf: &mut BytesMut, key: u8, value: &[u8]) {
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

    const LIMITS: Limits = Limits {
        max_logs: 1000,
        max_bytes: 1 << 20,
    };

    fn queued(session: &str, process: &str, first_seq: i32, logs: usize, conn: u32) -> QueuedFrame {
        let request = workload::request(session, process, first_seq, logs);
        QueuedFrame {
            frame: LogFrame::from_request(&request).unwrap(),
            conn,
        }
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
        let mut out = Vec::new();
        coalesce(&frames, LIMITS, &mut out);
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
    fn requests_sharing_a_connection_or_a_session_conflict() {
        let frames = [
            queued("s1", "codex", 0, 2, 1),
            queued("s2", "codex", 0, 2, 1),
            queued("s3", "codex", 0, 2, 2),
            queued("s3", "codex", 2, 2, 3),
        ];
        let mut out = Vec::new();
        coalesce(&frames, LIMITS, &mut out);
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
        let mut out = Vec::new();
        coalesce(&frames, limits, &mut out);
        let logs: Vec<u32> = out.iter().map(|r| r.request.logs).collect();
        assert_eq!(logs, [6, 6]);
        assert!(
            out[0].order.conflicts(&out[1].order),
            "same session and connection"
        );
        assert_eq!(decode(&out[1]).logs[0].sequence_number, 6);
    }
}
