//! Splitting requests for their size: a request the destination refused as too large
//! is cut in two at a log boundary, and the limits the destination was found to take
//! are remembered so later requests are built (or cut) within them.

use std::ops::Range;

use bytes::{BufMut, BytesMut};

use super::batch::{first_record_len, Limits, Outgoing, LOGS_KEY};
use crate::reporter::grpc::Oversize;
use crate::reporter::EncodedRequest;
use crate::sync::atomic::{AtomicUsize, Ordering};

/// The limits one destination was found to take: the configured ones until it
/// refuses a request for its size, then lower. Shared by the deliveries (which lower
/// it) and the drain thread (which builds requests within it). It never grows back
/// while the forwarder runs with that reporter; a new `run` (a new reporter, or a
/// restart) starts again from the configured limits.
#[derive(Debug)]
pub struct Learned {
    max_logs: AtomicUsize,
    max_bytes: AtomicUsize,
}

impl Learned {
    /// Starts at the configured limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            max_logs: AtomicUsize::new(limits.max_logs),
            max_bytes: AtomicUsize::new(limits.max_bytes),
        }
    }

    /// The limits now.
    pub fn limits(&self) -> Limits {
        Limits {
            max_logs: self.max_logs.load(Ordering::Relaxed),
            max_bytes: self.max_bytes.load(Ordering::Relaxed),
        }
    }

    /// Lowers the limits to `limits` where those are lower (never below one).
    /// Returns the limits after.
    pub fn lower(&self, limits: Limits) -> Limits {
        self.max_logs
            .fetch_min(limits.max_logs.max(1), Ordering::Relaxed);
        self.max_bytes
            .fetch_min(limits.max_bytes.max(1), Ordering::Relaxed);
        self.limits()
    }
}

/// A request's log records: where each ends (byte offsets from the start) and the
/// bytes after them (the session id and process name fields).
struct Records<'a> {
    bytes: &'a [u8],
    ends: Vec<usize>,
}

impl<'a> Records<'a> {
    fn of(bytes: &'a [u8]) -> Self {
        let mut ends = Vec::new();
        let mut at = 0;
        while bytes.get(at) == Some(&LOGS_KEY) {
            at += first_record_len(&bytes[at..]);
            ends.push(at);
        }
        Self { bytes, ends }
    }

    /// End of the records (start of the session id and process name).
    fn end(&self) -> usize {
        self.ends.last().copied().unwrap_or(0)
    }

    /// One request of the records `logs` (indices), with the same trailer, and where
    /// its records end.
    fn request(&self, logs: Range<usize>) -> (bytes::Bytes, u32) {
        let start = if logs.start == 0 {
            0
        } else {
            self.ends[logs.start - 1]
        };
        let end = self.ends[logs.end - 1];
        let trailer = &self.bytes[self.end()..];
        let mut buf = BytesMut::with_capacity(end - start + trailer.len());
        buf.put_slice(&self.bytes[start..end]);
        buf.put_slice(trailer);
        (buf.freeze(), (end - start) as u32)
    }
}

/// Cuts `out` after its first `at` logs (`0 < at < logs`) into two requests of the
/// same session id and process name, each frame counted with the part holding its
/// last log. Both keep `out`'s order key.
fn cut(out: &Outgoing, records: &Records<'_>, at: usize) -> (Outgoing, Outgoing) {
    let count = records.ends.len();
    debug_assert!(0 < at && at < count);
    let at32 = at as u32;
    let (head_ends, tail_ends): (Vec<u32>, Vec<u32>) =
        out.frame_ends.iter().partition(|&&end| end <= at32);
    let tail_ends: Vec<u32> = tail_ends.into_iter().map(|end| end - at32).collect();
    let part = |logs: Range<usize>, frame_ends: Vec<u32>| {
        let (bytes, records_end) = records.request(logs.clone());
        Outgoing {
            request: EncodedRequest {
                bytes,
                logs: logs.len() as u32,
                frames: frame_ends.len() as u32,
                records_end: Some(records_end),
            },
            order: out.order.clone(),
            frame_ends,
        }
    };
    (part(0..at, head_ends), part(at..count, tail_ends))
}

/// `out` in two halves, for a refusal over `over`: at the log boundary nearest the
/// middle of its bytes (too many bytes) or of its logs (too many logs). `None` when
/// it holds a single log, which cannot be split.
pub fn halves(out: &Outgoing, over: Oversize) -> Option<(Outgoing, Outgoing)> {
    let records = Records::of(&out.request.bytes);
    let count = records.ends.len();
    if count < 2 {
        return None;
    }
    let at = match over {
        Oversize::Logs(_) => count / 2,
        Oversize::Bytes(_) => {
            let middle = records.end() / 2;
            // First log ending past the middle: cut before or after it, whichever is nearer.
            let past = records.ends.partition_point(|&end| end <= middle);
            let before = if past == 0 { 0 } else { records.ends[past - 1] };
            let after = records.ends[past.min(count - 1)];
            if middle - before <= after - middle {
                past
            } else {
                past + 1
            }
        }
    };
    Some(cut(out, &records, at.clamp(1, count - 1)))
}

/// `out` cut after its first `logs` logs (`0 < logs <` its logs), as a replay
/// resuming after the parts it settled before it was stopped cuts its record.
pub fn at(out: &Outgoing, logs: usize) -> Option<(Outgoing, Outgoing)> {
    let records = Records::of(&out.request.bytes);
    (0 < logs && logs < records.ends.len()).then(|| cut(out, &records, logs))
}

/// When `out` is over `limits` and holds more than one log: its longest head within
/// them (at least one log) and the rest, which may still be over.
pub fn fit(out: &Outgoing, limits: Limits) -> Option<(Outgoing, Outgoing)> {
    let request = &out.request;
    if (request.logs as usize <= limits.max_logs && request.bytes.len() <= limits.max_bytes)
        || request.logs < 2
    {
        return None;
    }
    let records = Records::of(&request.bytes);
    let count = records.ends.len();
    if count < 2 {
        return None;
    }
    let trailer = request.bytes.len() - records.end();
    let by_bytes = records
        .ends
        .partition_point(|&end| end + trailer <= limits.max_bytes);
    let at = by_bytes.min(limits.max_logs).clamp(1, count - 1);
    Some(cut(out, &records, at))
}

/// The limit to remember after a refusal over `over` of `refused`, split into
/// `halves`: the limit the destination stated when it is below what was refused,
/// otherwise the larger half.
pub fn limit_after_refusal(
    refused: &Outgoing,
    over: Oversize,
    halves: (&Outgoing, &Outgoing),
    current: Limits,
) -> Limits {
    let (a, b) = halves;
    match over {
        Oversize::Bytes(stated) => {
            let refused = refused.request.bytes.len();
            let larger = a.request.bytes.len().max(b.request.bytes.len());
            Limits {
                max_bytes: stated.filter(|&s| s < refused).unwrap_or(larger),
                ..current
            }
        }
        Oversize::Logs(stated) => {
            let refused = refused.request.logs as usize;
            let larger = a.request.logs.max(b.request.logs) as usize;
            Limits {
                max_logs: stated.filter(|&s| s < refused).unwrap_or(larger),
                ..current
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::LogFrame;
    use crate::forwarder::coalesce;
    use crate::intake::QueuedFrame;
    use crate::workload;

    const WIDE: Limits = Limits {
        max_logs: 100_000,
        max_bytes: 4 << 20,
    };

    /// One request of `frames` frames of `logs` logs each, of session s1.
    fn request(frames: i32, logs: usize) -> Outgoing {
        let queued: Vec<QueuedFrame> = (0..frames)
            .map(|i| QueuedFrame {
                frame: LogFrame::from_request(&workload::request(
                    "s1",
                    "codex",
                    i * logs as i32,
                    logs,
                ))
                .unwrap(),
                conn: 1,
                key_run: 0,
            })
            .collect();
        let mut out = Vec::new();
        coalesce(&queued, WIDE, &mut out);
        assert_eq!(out.len(), 1);
        out.pop().unwrap()
    }

    fn seqs(out: &Outgoing) -> Vec<i32> {
        out.request
            .decode()
            .unwrap()
            .logs
            .iter()
            .map(|l| l.sequence_number)
            .collect()
    }

    #[test]
    fn halves_by_bytes_keep_the_logs_in_order_and_the_frames_counted_once() {
        let whole = request(5, 10);
        let (a, b) = halves(&whole, Oversize::Bytes(None)).unwrap();
        let mut all = seqs(&a);
        all.extend(seqs(&b));
        assert_eq!(all, (0..50).collect::<Vec<_>>());
        assert_eq!(a.request.logs + b.request.logs, 50);
        assert_eq!(a.request.frames + b.request.frames, 5);
        let half = whole.request.bytes.len() / 2;
        for part in [&a, &b] {
            let decoded = part.request.decode().unwrap();
            assert_eq!(
                (
                    decoded.session_id.as_str(),
                    decoded.confined_process_name.as_str()
                ),
                ("s1", "codex")
            );
            assert!(
                part.request.bytes.len() < half + 400,
                "{} bytes for a half of {}",
                part.request.bytes.len(),
                whole.request.bytes.len()
            );
            assert_eq!(part.order, whole.order);
        }
        // Frame ends follow their logs: each part's ends are within its logs.
        assert!(a.frame_ends.iter().all(|&e| e <= a.request.logs));
        assert_eq!(b.frame_ends.last(), Some(&b.request.logs));
    }

    #[test]
    fn halves_by_logs_cut_at_the_middle_log() {
        let whole = request(1, 9);
        let (a, b) = halves(&whole, Oversize::Logs(Some(5))).unwrap();
        assert_eq!((a.request.logs, b.request.logs), (4, 5));
        assert_eq!((a.request.frames, b.request.frames), (0, 1));
        assert_eq!(b.frame_ends, [5]);
    }

    #[test]
    fn a_single_log_cannot_be_halved() {
        assert_eq!(halves(&request(1, 1), Oversize::Bytes(None)), None);
    }

    #[test]
    fn fit_cuts_the_longest_head_within_the_limits() {
        let whole = request(4, 10);
        assert_eq!(fit(&whole, WIDE), None, "within the limits: left alone");
        let limits = Limits {
            max_logs: 1000,
            max_bytes: whole.request.bytes.len() / 3,
        };
        let (head, rest) = fit(&whole, limits).unwrap();
        assert!(head.request.bytes.len() <= limits.max_bytes);
        let one_more = fit(
            &whole,
            Limits {
                max_bytes: head.request.bytes.len() - 1,
                ..limits
            },
        )
        .unwrap();
        assert!(one_more.0.request.logs < head.request.logs);
        assert_eq!(head.request.logs + rest.request.logs, 40);
        let (head, _) = fit(
            &whole,
            Limits {
                max_logs: 7,
                ..WIDE
            },
        )
        .unwrap();
        assert_eq!(head.request.logs, 7);
    }

    #[test]
    fn learned_limits_only_go_down() {
        let learned = Learned::new(Limits {
            max_logs: 1000,
            max_bytes: 1 << 20,
        });
        let after = learned.lower(Limits {
            max_logs: 5000,
            max_bytes: 65_536,
        });
        assert_eq!(
            after,
            Limits {
                max_logs: 1000,
                max_bytes: 65_536
            }
        );
        learned.lower(Limits {
            max_logs: 0,
            max_bytes: 1 << 22,
        });
        assert_eq!(
            learned.limits(),
            Limits {
                max_logs: 1,
                max_bytes: 65_536
            }
        );
    }

    #[test]
    fn a_stated_limit_below_the_refused_size_is_remembered_else_the_larger_half() {
        let whole = request(4, 10);
        let (a, b) = halves(&whole, Oversize::Bytes(None)).unwrap();
        let stated = limit_after_refusal(&whole, Oversize::Bytes(Some(1000)), (&a, &b), WIDE);
        assert_eq!(stated.max_bytes, 1000);
        assert_eq!(stated.max_logs, WIDE.max_logs);
        let unstated = limit_after_refusal(&whole, Oversize::Bytes(None), (&a, &b), WIDE);
        assert_eq!(
            unstated.max_bytes,
            a.request.bytes.len().max(b.request.bytes.len())
        );
        let logs = limit_after_refusal(&whole, Oversize::Logs(Some(1000)), (&a, &b), WIDE);
        assert_eq!(
            logs.max_logs, 20,
            "a stated limit above the refused count is not believed"
        );
    }
}
