//! Message decoding: validates a frame's protobuf payload as the contract requires and
//! keeps its bytes, so logs are forwarded without being decoded and re-encoded.

use std::ops::Range;

use bytes::{Buf as _, BufMut, Bytes, BytesMut};
use prost::encoding::{encode_varint, WireType};
use prost::Message as _;

use super::scan::{log_sequence_number, next_record, walk_status, RequestScan};
use super::wire::{
    enter, expect_wire, read_body, read_key, skip_field, WireResult, RECURSION_LIMIT,
};
use super::{CodecError, RawFrame, Tag, MAX_PAYLOAD_LEN};
use crate::proto::agent::ReportBoundaryLogsRequest;
use crate::proto::envelope::BoundaryStatus;

/// Key byte of a `logs` record (field 1, length-delimited).
const LOGS_KEY: u8 = 0x0A;
/// Key byte of `session_id` (field 2, length-delimited).
const SESSION_ID_KEY: u8 = 0x12;
/// Key byte of `confined_process_name` (field 3, length-delimited).
const PROCESS_NAME_KEY: u8 = 0x1A;

/// What one valid frame carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Logs to forward.
    Logs(LogFrame),
    /// Boundary's own drop counts; never forwarded.
    Status(BoundaryStatus),
}

/// Sequence numbers of a frame's logs, summarised for gap tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeqSummary {
    /// Sequence number of the first log (0 when the frame has no logs).
    pub first: i32,
    /// Sequence number of the last log.
    pub last: i32,
    /// True when each log's number is its predecessor's plus one.
    pub contiguous: bool,
}

/// A validated `ReportBoundaryLogsRequest`, held as wire bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct LogFrame {
    /// Canonical request bytes: the `logs` records, then `session_id`, then
    /// `confined_process_name` (unknown top-level fields removed).
    bytes: Bytes,
    /// Where the field-1 (`logs`) records lie in `bytes`, tags included.
    logs: Range<u16>,
    /// Where the `session_id` string (without key and length) lies in `bytes`.
    session_id: Range<u16>,
    /// Where the `confined_process_name` string lies in `bytes`.
    process_name: Range<u16>,
    log_count: u32,
    seq: SeqSummary,
}

impl LogFrame {
    /// Number of logs in the frame.
    pub fn log_count(&self) -> u32 {
        self.log_count
    }
    pub fn session_id(&self) -> &str {
        self.str_at(&self.session_id)
    }
    pub fn confined_process_name(&self) -> &str {
        self.str_at(&self.process_name)
    }
    /// The `session_id` and `confined_process_name` bytes, for comparing frames
    /// without checking their UTF-8 again (the forwarder does it for every frame).
    pub fn request_key(&self) -> (&[u8], &[u8]) {
        (
            self.bytes_at(&self.session_id),
            self.bytes_at(&self.process_name),
        )
    }
    /// The encoded field-1 records (tag, length, `BoundaryLog`), ready to be
    /// concatenated with other frames' records into one request.
    pub fn encoded_logs(&self) -> &[u8] {
        &self.bytes[usize::from(self.logs.start)..usize::from(self.logs.end)]
    }
    /// The whole request as wire bytes (logs, session id, process name).
    pub fn encoded_request(&self) -> &Bytes {
        &self.bytes
    }
    /// Sequence summary of the logs.
    pub fn seq(&self) -> SeqSummary {
        self.seq
    }
    /// Every log's sequence number in order (walks the bytes; for the rare
    /// non-contiguous frame).
    pub fn sequence_numbers(&self) -> impl Iterator<Item = i32> + '_ {
        let mut records = self.encoded_logs();
        std::iter::from_fn(move || {
            if records.is_empty() {
                return None;
            }
            let body = next_record(&mut records).ok()?;
            log_sequence_number(body).ok()
        })
    }
    /// Fully decoded request (for the stdout reporter and tests).
    pub fn to_request(&self) -> ReportBoundaryLogsRequest {
        ReportBoundaryLogsRequest::decode(self.bytes.clone())
            .expect("LogFrame bytes are validated when the frame is decoded")
    }

    /// Encodes `request` into a frame of logs, as if it had arrived in a TagV1 frame
    /// (for tests and embedders that hold a request); `TooLarge` over the frame limit.
    pub fn from_request(request: &ReportBoundaryLogsRequest) -> Result<LogFrame, CodecError> {
        let payload = Bytes::from(request.encode_to_vec());
        match decode_message(RawFrame {
            tag: Tag::V1,
            payload,
        })? {
            Message::Logs(frame) => Ok(frame),
            Message::Status(_) => unreachable!("a TagV1 payload is always logs"),
        }
    }

    fn bytes_at(&self, range: &Range<u16>) -> &[u8] {
        &self.bytes[usize::from(range.start)..usize::from(range.end)]
    }

    fn str_at(&self, range: &Range<u16>) -> &str {
        // Validated as UTF-8 when the frame was decoded.
        std::str::from_utf8(self.bytes_at(range)).unwrap_or_default()
    }
}

/// Validates a frame's payload. Frame-local errors (`Decode`, `UnknownVariant`)
/// leave the connection usable. A payload over the frame limit (only possible for a
/// hand-built `RawFrame`) is `TooLarge`.
pub fn decode_message(frame: RawFrame) -> Result<Message, CodecError> {
    decode_message_noting_superseded(frame).map(|(message, _)| message)
}

/// What the later variant of a TagV2 envelope replaced. `BoundaryMessage.msg` is a
/// oneof: when an envelope sets it more than once, protobuf (prost, and Google's
/// runtimes) keeps the last variant on the wire and drops the earlier ones, so what
/// they carried is not used. boundary never writes such an envelope. Empty for every
/// other frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Superseded {
    /// Logs in `logs` variants that a later `status` replaced.
    pub logs: u32,
    /// `status` variants that later `logs` replaced.
    pub statuses: u32,
}

impl Superseded {
    /// True when nothing was replaced.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// [`decode_message`], also telling what a later envelope variant replaced, so that
/// it can be counted rather than lost in silence.
pub fn decode_message_noting_superseded(
    frame: RawFrame,
) -> Result<(Message, Superseded), CodecError> {
    let payload = frame.payload;
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(CodecError::TooLarge(payload.len()));
    }
    match frame.tag {
        Tag::V1 => {
            let mut scan = RequestScan::default();
            scan.walk(&payload, 0, RECURSION_LIMIT)?;
            let whole = 0..payload.len();
            Ok((
                Message::Logs(log_frame(payload, &scan, &whole, &[])),
                Superseded::default(),
            ))
        }
        Tag::V2 => decode_envelope(payload),
    }
}

/// Validates an encoded `ReportBoundaryLogsRequest` (a whole request, of any size) as
/// prost would decode it (every field, nesting and UTF-8 string checked) and counts its
/// logs, without materialising it: what a receiver that only counts needs. The count is
/// prost's `logs.len()` for every input prost accepts; prost's errors are `Decode` here.
pub fn count_request_logs(bytes: &[u8]) -> Result<u32, CodecError> {
    let mut scan = RequestScan::default();
    scan.walk(bytes, 0, RECURSION_LIMIT)?;
    Ok(scan.log_count)
}

/// The envelope's variant as prost would leave it: the last one wins, and a
/// repeated variant merges into the one before.
enum Variant {
    None,
    /// Request segments (ranges of the payload) merged in order.
    Logs {
        scan: RequestScan,
        first: Range<usize>,
        more: Vec<Range<usize>>,
    },
    Status(BoundaryStatus),
}

fn decode_envelope(payload: Bytes) -> Result<(Message, Superseded), CodecError> {
    let mut variant = Variant::None;
    let mut superseded = Superseded::default();
    let mut buf = &payload[..];
    while !buf.is_empty() {
        let (tag, wire) = read_key(&mut buf)?;
        match tag {
            1 | 2 => {
                expect_wire(wire, WireType::LengthDelimited)?;
                let budget = enter(RECURSION_LIMIT)?;
                let (body, _) = read_body(&mut buf)?;
                let end = payload.len() - buf.len();
                let range = end - body.len()..end;
                if tag == 1 {
                    if matches!(variant, Variant::Status(_)) {
                        superseded.statuses += 1;
                    }
                    merge_logs(&mut variant, body, range, budget)?;
                } else {
                    if let Variant::Logs { scan, .. } = &variant {
                        superseded.logs += scan.log_count;
                    }
                    if !matches!(variant, Variant::Status(_)) {
                        variant = Variant::Status(BoundaryStatus::default());
                    }
                    if let Variant::Status(status) = &mut variant {
                        walk_status(body, status, budget)?;
                    }
                }
            }
            _ => skip_field(wire, tag, &mut buf, RECURSION_LIMIT)?,
        }
    }
    let message = match variant {
        Variant::None => return Err(CodecError::UnknownVariant),
        Variant::Status(status) => Message::Status(status),
        Variant::Logs { scan, first, more } => {
            Message::Logs(log_frame(payload, &scan, &first, &more))
        }
    };
    Ok((message, superseded))
}

fn merge_logs(
    variant: &mut Variant,
    body: &[u8],
    range: Range<usize>,
    budget: u32,
) -> WireResult<()> {
    match variant {
        Variant::Logs { scan, more, .. } => {
            more.push(range.clone());
            scan.walk(body, range.start, budget)
        }
        _ => {
            let mut scan = RequestScan::default();
            scan.walk(body, range.start, budget)?;
            *variant = Variant::Logs {
                scan,
                first: range,
                more: Vec::new(),
            };
            Ok(())
        }
    }
}

/// Builds the frame: the payload itself, narrowed to the request segment, when that is
/// already canonical; otherwise canonical bytes rebuilt from the segments.
///
/// The payload is taken, not sliced: a slice and the payload's drop would each be an
/// atomic operation on the reference count its receive arena shares with the frames
/// before it, a cache line the forwarder's thread writes as it drops those frames.
fn log_frame(
    payload: Bytes,
    scan: &RequestScan,
    first: &Range<usize>,
    more: &[Range<usize>],
) -> LogFrame {
    if scan.is_canonical() {
        let base = first.start;
        let relative = |r: &Range<usize>| {
            if r.is_empty() {
                0..0
            } else {
                narrow(r.start - base..r.end - base)
            }
        };
        let mut bytes = payload;
        bytes.truncate(base + scan.canonical_end);
        bytes.advance(base);
        LogFrame {
            bytes,
            logs: narrow(0..scan.logs_end),
            session_id: relative(&scan.session),
            process_name: relative(&scan.process),
            log_count: scan.log_count,
            seq: scan.seq,
        }
    } else {
        rebuild(&payload, scan, std::iter::once(first).chain(more))
    }
}

/// Writes canonical bytes: every segment's `logs` records in order (keys and lengths
/// minimally encoded, bodies as received), then the last non-empty strings.
fn rebuild<'a>(
    payload: &Bytes,
    scan: &RequestScan,
    segments: impl Iterator<Item = &'a Range<usize>>,
) -> LogFrame {
    // The rebuilt bytes are never longer than the payload they come from.
    let mut out = BytesMut::with_capacity(payload.len());
    for segment in segments {
        copy_records(&payload[segment.clone()], &mut out)
            .expect("segments are validated before they are rebuilt");
    }
    let logs = narrow(0..out.len());
    let session_id = put_string(&mut out, SESSION_ID_KEY, &payload[scan.session.clone()]);
    let process_name = put_string(&mut out, PROCESS_NAME_KEY, &payload[scan.process.clone()]);
    LogFrame {
        bytes: out.freeze(),
        logs,
        session_id,
        process_name,
        log_count: scan.log_count,
        seq: scan.seq,
    }
}

fn copy_records(mut buf: &[u8], out: &mut BytesMut) -> WireResult<()> {
    while !buf.is_empty() {
        let (tag, wire) = read_key(&mut buf)?;
        if tag == 1 {
            let (body, _) = read_body(&mut buf)?;
            out.put_u8(LOGS_KEY);
            encode_varint(body.len() as u64, out);
            out.put_slice(body);
        } else {
            skip_field(wire, tag, &mut buf, u32::MAX)?;
        }
    }
    Ok(())
}

/// Appends a string field unless it is empty; returns where its text lies.
fn put_string(out: &mut BytesMut, key: u8, text: &[u8]) -> Range<u16> {
    if text.is_empty() {
        return 0..0;
    }
    out.put_u8(key);
    encode_varint(text.len() as u64, out);
    let start = out.len();
    out.put_slice(text);
    narrow(start..out.len())
}

/// Ranges of a payload of at most `MAX_PAYLOAD_LEN` bytes fit in `u16`.
fn narrow(range: Range<usize>) -> Range<u16> {
    debug_assert!(range.end <= MAX_PAYLOAD_LEN);
    range.start as u16..range.end as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/wire-format.md: a log's unknown fields reach coderd as boundary sent them;
    /// the request's own unknown fields are left out.
    #[test]
    fn unknown_fields_inside_a_log_pass_through_and_the_requests_own_are_left_out() {
        let log = [
            0x20, 0x07, // sequence_number 7
            0x98, 0x06, 0x05, // field 99, varint 5 (unknown)
        ];
        let mut payload = vec![0x0a, log.len() as u8];
        payload.extend_from_slice(&log);
        payload.extend_from_slice(&[0x12, 0x01, b's']); // session_id "s"
        payload.extend_from_slice(&[0xf8, 0x06, 0x01]); // field 111, varint 1 (unknown)
        let frame = RawFrame {
            tag: Tag::V1,
            payload: Bytes::from(payload),
        };
        let Ok(Message::Logs(frame)) = decode_message(frame) else {
            panic!("a valid request");
        };
        assert_eq!(frame.log_count(), 1);
        assert_eq!(frame.sequence_numbers().collect::<Vec<_>>(), [7]);
        let mut logs = vec![0x0a, log.len() as u8];
        logs.extend_from_slice(&log);
        assert_eq!(frame.encoded_logs(), &logs[..]);
        let mut request = logs;
        request.extend_from_slice(&[0x12, 0x01, b's']);
        assert_eq!(&frame.encoded_request()[..], &request[..]);
    }

    #[test]
    fn counting_a_request_agrees_with_prost_on_valid_and_invalid_bytes() {
        let request = ReportBoundaryLogsRequest {
            logs: vec![Default::default(); 1200],
            session_id: "6f1c2b9a-2d4e-4c1b-9b8e-0a1b2c3d4e5f".into(),
            confined_process_name: "curl".into(),
        };
        let bytes = request.encode_to_vec();
        assert_eq!(count_request_logs(&bytes).unwrap(), 1200);
        assert_eq!(count_request_logs(&[]).unwrap(), 0);
        let bad_utf8 = [0x12, 0x02, 0xff, 0xfe];
        let cut_short = &bytes[..bytes.len() - 1];
        for bad in [&bad_utf8[..], cut_short, &[0x0a, 0x05, 0x08][..]] {
            assert!(ReportBoundaryLogsRequest::decode(bad).is_err());
            assert!(
                matches!(count_request_logs(bad), Err(CodecError::Decode(_))),
                "{bad:?}"
            );
        }
    }
}
