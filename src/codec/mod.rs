//! Wire codec: framing (header, incremental decoder, encoder) kept apart from message decoding.
//!
//! `frame` knows only the 4-byte header and byte streams; `message` knows only
//! protobuf payloads (validated by the `scan` walker over `wire` primitives).
//! Neither touches a socket.

mod error;
mod frame;
mod message;
mod scan;
mod wire;

pub use error::CodecError;
pub use frame::{
    decode_header, encode_frame, encode_header, FrameDecoder, Header, RawFrame, Tag, HEADER_LEN,
    MAX_PAYLOAD_LEN,
};
pub use message::{
    count_request_logs, decode_message, decode_message_noting_superseded, LogFrame, Message,
    SeqSummary, Superseded,
};
