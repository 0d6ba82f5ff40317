//! Framing: the 4-byte header (tag in the top 8 bits, length in the low 24) and an
//! incremental decoder that turns arbitrarily split byte chunks into frames.

use bytes::{Bytes, BytesMut};

use super::CodecError;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 4;
/// Largest payload either tag may carry.
pub const MAX_PAYLOAD_LEN: usize = 1 << 15;

/// Which payload a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tag {
    /// A bare `ReportBoundaryLogsRequest`.
    V1 = 1,
    /// A `BoundaryMessage` envelope.
    V2 = 2,
}

/// A decoded, validated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: Tag,
    pub len: usize,
}

/// Parses a header; fails on an unsupported tag or a length over the limit.
pub fn decode_header(_bytes: [u8; HEADER_LEN]) -> Result<Header, CodecError> {
    todo!()
}

/// Encodes a header; fails with `TooLarge` over the limit.
pub fn encode_header(_tag: Tag, _len: usize) -> Result<[u8; HEADER_LEN], CodecError> {
    todo!()
}

/// Appends header + payload to `out`; fails with `TooLarge` over the limit.
pub fn encode_frame(_tag: Tag, _payload: &[u8], _out: &mut Vec<u8>) -> Result<(), CodecError> {
    todo!()
}

/// One complete frame cut from the stream; `payload` shares the decoder's allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub tag: Tag,
    pub payload: Bytes,
}

/// Incremental decoder for one connection. Holds at most one header plus one
/// maximum payload of unconsumed bytes.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes bytes from the front of `input` and returns the next complete frame,
    /// `Ok(None)` when `input` is used up without completing one (call again with
    /// more bytes), or a fatal error (after which the decoder must not be used).
    pub fn decode(&mut self, _input: &mut &[u8]) -> Result<Option<RawFrame>, CodecError> {
        todo!()
    }

    /// At end of stream: `Err(Truncated)` when a partial frame is buffered.
    pub fn finish(&self) -> Result<(), CodecError> {
        todo!()
    }

    /// Bytes of a partial frame currently held.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}
