//! The call's codec: writes already-encoded request bytes as they are (or encodes a
//! message straight into tonic's buffer) and decodes the empty response with prost.

use bytes::{BufMut as _, Bytes};
use prost::Message as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use super::MAX_RESPONSE_BYTES;
use crate::proto::agent::{ReportBoundaryLogsRequest, ReportBoundaryLogsResponse};

/// What one call carries: wire bytes from the forwarder, or a message to encode.
pub(super) enum Outbound {
    Encoded(Bytes),
    Message(ReportBoundaryLogsRequest),
}

impl Outbound {
    pub(super) fn encoded_len(&self) -> usize {
        match self {
            Self::Encoded(bytes) => bytes.len(),
            Self::Message(message) => message.encoded_len(),
        }
    }
}

/// Writes `Outbound` as it is and decodes the (empty) response with prost.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RawCodec;

impl Codec for RawCodec {
    type Encode = Outbound;
    type Decode = ReportBoundaryLogsResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ResponseDecoder
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Outbound;
    type Error = Status;

    fn encode(&mut self, item: Outbound, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Outbound::Encoded(bytes) => {
                dst.reserve(bytes.len());
                dst.put_slice(&bytes);
                Ok(())
            }
            Outbound::Message(message) => message
                .encode(dst)
                .map_err(|e| Status::internal(format!("encoding the request: {e}"))),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = ReportBoundaryLogsResponse;
    type Error = Status;

    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ReportBoundaryLogsResponse>, Status> {
        use bytes::Buf as _;
        // coderd has taken the request by now: whatever this says must not read as a
        // refusal of the request (see `failure::oversize`).
        if src.remaining() > MAX_RESPONSE_BYTES {
            return Err(Status::internal(format!(
                "coderd's response is {} bytes, over the {MAX_RESPONSE_BYTES} this \
                 proxy takes for an empty ReportBoundaryLogsResponse",
                src.remaining()
            )));
        }
        ReportBoundaryLogsResponse::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding coderd's response: {e}")))
    }
}
