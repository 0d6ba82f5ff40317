//! Message decoding: validates a frame's protobuf payload as the contract requires and
//! keeps its bytes, so logs are forwarded without being decoded and re-encoded.

use std::ops::Range;

use bytes::Bytes;

use super::{CodecError, RawFrame};
use crate::proto::agent::ReportBoundaryLogsRequest;
use crate::proto::envelope::BoundaryStatus;

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
    session_id: Range<u16>,
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
        todo!()
    }
    pub fn confined_process_name(&self) -> &str {
        todo!()
    }
    /// The encoded field-1 records (tag, length, `BoundaryLog`), ready to be
    /// concatenated with other frames' records into one request.
    pub fn encoded_logs(&self) -> &[u8] {
        todo!()
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
        std::iter::empty()
    }
    /// Fully decoded request (for the stdout reporter and tests).
    pub fn to_request(&self) -> ReportBoundaryLogsRequest {
        todo!()
    }
}

/// Validates a frame's payload. Frame-local errors (`Decode`, `UnknownVariant`)
/// leave the connection usable.
pub fn decode_message(_frame: RawFrame) -> Result<Message, CodecError> {
    todo!()
}
