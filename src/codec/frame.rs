//! Framing: the 4-byte header (tag in the top 8 bits, length in the low 24) and an
//! incremental decoder that turns arbitrarily split byte chunks into frames.

use bytes::{Bytes, BytesMut};

use super::CodecError;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 4;
/// Largest payload either tag may carry.
pub const MAX_PAYLOAD_LEN: usize = 1 << 15;

/// Largest arena the decoder reserves at once. Payloads of consecutive frames are
/// copied into one arena and share its allocation; an arena is sized by the bytes the
/// caller has at hand, so a lone small frame does not pin a large allocation. No
/// larger than one payload of the largest size: a frame kept (in the ring) pins at
/// most its arena, so this keeps the memory a kept frame can pin, and a decoder
/// can hold, to one frame's worth (a 64 KiB arena let each small frame kept from
/// a 64 KiB read pin 64 KiB).
const MAX_ARENA_LEN: usize = MAX_PAYLOAD_LEN;

/// Which payload a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tag {
    /// A bare `ReportBoundaryLogsRequest`.
    V1 = 1,
    /// A `BoundaryMessage` envelope.
    V2 = 2,
}

impl TryFrom<u8> for Tag {
    type Error = CodecError;

    fn try_from(byte: u8) -> Result<Self, CodecError> {
        match byte {
            1 => Ok(Tag::V1),
            2 => Ok(Tag::V2),
            other => Err(CodecError::UnsupportedTag(other)),
        }
    }
}

/// A decoded, validated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: Tag,
    pub len: usize,
}

/// Parses a header; fails on an unsupported tag or a length over the limit.
pub fn decode_header(bytes: [u8; HEADER_LEN]) -> Result<Header, CodecError> {
    let tag = Tag::try_from(bytes[0])?;
    let len = (u32::from_be_bytes(bytes) & 0x00FF_FFFF) as usize;
    if len > MAX_PAYLOAD_LEN {
        return Err(CodecError::TooLarge(len));
    }
    Ok(Header { tag, len })
}

/// Encodes a header; fails with `TooLarge` over the limit.
pub fn encode_header(tag: Tag, len: usize) -> Result<[u8; HEADER_LEN], CodecError> {
    if len > MAX_PAYLOAD_LEN {
        return Err(CodecError::TooLarge(len));
    }
    Ok((((tag as u32) << 24) | len as u32).to_be_bytes())
}

/// Appends header + payload to `out`; fails with `TooLarge` over the limit.
pub fn encode_frame(tag: Tag, payload: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
    let header = encode_header(tag, payload.len())?;
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    Ok(())
}

/// One complete frame cut from the stream; `payload` shares the decoder's allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub tag: Tag,
    pub payload: Bytes,
}

/// Incremental decoder for one connection. Holds at most one header plus one
/// maximum payload of unconsumed bytes.
///
/// Each input byte is copied once, into an arena shared by the payloads of the
/// frames cut from it. When the decoder stops at a frame boundary with its input
/// used up it lets go of the arena, so an idle decoder holds no heap memory.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// Arena the current payload is collected in; its spare capacity is kept for the
    /// payloads that follow. Holds exactly the current frame's payload bytes so far.
    buf: BytesMut,
    /// A header split across inputs.
    head: [u8; HEADER_LEN],
    head_len: u8,
    /// Header of the frame whose payload is being collected.
    pending: Option<Header>,
    /// The fatal error already reported; the stream cannot be framed after it.
    failed: Option<CodecError>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes bytes from the front of `input` and returns the next complete frame,
    /// `Ok(None)` when `input` is used up without completing one (call again with
    /// more bytes), or a fatal error (after which the decoder must not be used).
    ///
    /// A fatal error is reported as soon as the header is complete, before any of
    /// the payload is consumed; later calls return the same error.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<RawFrame>, CodecError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let header = match self.pending {
            Some(header) => header,
            None => match self.take_header(input) {
                Ok(Some(header)) => {
                    self.begin_payload(header, input.len());
                    header
                }
                Ok(None) => return Ok(None),
                Err(err) => {
                    self.failed = Some(err.clone());
                    return Err(err);
                }
            },
        };

        let missing = header.len - self.buf.len();
        let take = missing.min(input.len());
        self.buf.extend_from_slice(&input[..take]);
        *input = &input[take..];
        if take < missing {
            return Ok(None);
        }

        self.pending = None;
        let payload = if header.len == 0 {
            Bytes::new()
        } else {
            self.buf.split_to(header.len).freeze()
        };
        if input.is_empty() || self.buf.capacity() == 0 {
            self.release_idle();
        }
        Ok(Some(RawFrame {
            tag: header.tag,
            payload,
        }))
    }

    /// At end of stream: `Err(Truncated)` when a partial frame is buffered.
    pub fn finish(&self) -> Result<(), CodecError> {
        match self.buffered() {
            0 => Ok(()),
            buffered => Err(CodecError::Truncated { buffered }),
        }
    }

    /// Bytes of a partial frame currently held (header bytes included).
    pub fn buffered(&self) -> usize {
        match self.pending {
            Some(_) => HEADER_LEN + self.buf.len(),
            None => usize::from(self.head_len),
        }
    }

    /// Drops the arena unless a payload is being collected, so the decoder holds no
    /// heap memory. `decode` does this on its own whenever it stops at a frame
    /// boundary with its input used up; frames already returned keep their bytes.
    pub fn release_idle(&mut self) {
        if self.pending.is_none() {
            self.buf = BytesMut::new();
        }
    }

    /// Capacity of the arena held (0 when idle).
    pub fn arena_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Completes the next header from `input`, or keeps the partial header.
    fn take_header(&mut self, input: &mut &[u8]) -> Result<Option<Header>, CodecError> {
        let bytes = if self.head_len == 0 && input.len() >= HEADER_LEN {
            let (head, rest) = input.split_at(HEADER_LEN);
            *input = rest;
            [head[0], head[1], head[2], head[3]]
        } else {
            let have = usize::from(self.head_len);
            let take = (HEADER_LEN - have).min(input.len());
            self.head[have..have + take].copy_from_slice(&input[..take]);
            *input = &input[take..];
            self.head_len += take as u8;
            if usize::from(self.head_len) < HEADER_LEN {
                return Ok(None);
            }
            self.head_len = 0;
            self.head
        };
        decode_header(bytes).map(Some)
    }

    /// Makes room for a payload of `header.len` bytes, `available` of which (and
    /// perhaps following frames) the caller already holds.
    fn begin_payload(&mut self, header: Header, available: usize) {
        debug_assert!(self.buf.is_empty());
        if self.buf.capacity() < header.len {
            let len = available.clamp(header.len, MAX_ARENA_LEN.max(header.len));
            self.buf = BytesMut::with_capacity(len);
        }
        self.pending = Some(header);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(word: u32) -> [u8; HEADER_LEN] {
        word.to_be_bytes()
    }

    #[test]
    fn header_of_exactly_the_limit_is_accepted() {
        let parsed = decode_header(header(0x0100_8000)).unwrap();
        assert_eq!(
            parsed,
            Header {
                tag: Tag::V1,
                len: MAX_PAYLOAD_LEN
            }
        );
        let parsed = decode_header(header(0x0200_0000)).unwrap();
        assert_eq!(
            parsed,
            Header {
                tag: Tag::V2,
                len: 0
            }
        );
    }

    #[test]
    fn header_one_over_the_limit_is_too_large() {
        assert_eq!(
            decode_header(header(0x0100_8001)),
            Err(CodecError::TooLarge(32769))
        );
        assert_eq!(
            decode_header(header(0x02FF_FFFF)),
            Err(CodecError::TooLarge(0xFF_FFFF))
        );
    }

    #[test]
    fn tags_other_than_one_and_two_are_unsupported() {
        for tag in [0u8, 3, 255] {
            let word = (u32::from(tag) << 24) | 10;
            assert_eq!(
                decode_header(header(word)),
                Err(CodecError::UnsupportedTag(tag)),
                "tag {tag}"
            );
        }
    }

    #[test]
    fn encoder_writes_tag_and_length_and_rejects_oversize() {
        assert_eq!(encode_header(Tag::V2, 0x8000).unwrap(), [2, 0, 0x80, 0]);
        assert_eq!(encode_header(Tag::V1, 5).unwrap(), [1, 0, 0, 5]);
        assert_eq!(
            encode_header(Tag::V1, 32769),
            Err(CodecError::TooLarge(32769))
        );
        let mut out = vec![9];
        encode_frame(Tag::V2, b"abc", &mut out).unwrap();
        assert_eq!(out, [9, 2, 0, 0, 3, b'a', b'b', b'c']);
        let big = vec![0u8; MAX_PAYLOAD_LEN + 1];
        assert_eq!(
            encode_frame(Tag::V1, &big, &mut out),
            Err(CodecError::TooLarge(MAX_PAYLOAD_LEN + 1))
        );
        assert_eq!(out.len(), 8, "nothing appended on failure");
    }

    #[test]
    fn too_large_is_reported_before_any_payload_byte_is_consumed() {
        let mut stream = header(0x0100_8001).to_vec();
        stream.extend_from_slice(&[7; 16]);
        let mut input = &stream[..];
        let mut decoder = FrameDecoder::new();
        assert_eq!(decoder.decode(&mut input), Err(CodecError::TooLarge(32769)));
        assert_eq!(input.len(), 16, "payload left unread");
        assert_eq!(decoder.decode(&mut input), Err(CodecError::TooLarge(32769)));
    }

    #[test]
    fn too_large_is_reported_when_the_split_header_completes() {
        let bytes = header(0x0100_8001);
        let mut decoder = FrameDecoder::new();
        for byte in &bytes[..3] {
            let mut input = std::slice::from_ref(byte);
            assert_eq!(decoder.decode(&mut input), Ok(None));
        }
        let mut input = &bytes[3..];
        assert_eq!(decoder.decode(&mut input), Err(CodecError::TooLarge(32769)));
    }

    #[test]
    fn empty_payload_frames_are_returned() {
        let mut decoder = FrameDecoder::new();
        let mut input = &[2u8, 0, 0, 0, 1, 0, 0, 0][..];
        let first = decoder.decode(&mut input).unwrap().unwrap();
        assert_eq!((first.tag, first.payload.len()), (Tag::V2, 0));
        let second = decoder.decode(&mut input).unwrap().unwrap();
        assert_eq!((second.tag, second.payload.len()), (Tag::V1, 0));
        assert_eq!(decoder.decode(&mut input), Ok(None));
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn consecutive_payloads_share_one_arena() {
        let mut stream = Vec::new();
        for i in 0..5u8 {
            encode_frame(Tag::V1, &[i; 100], &mut stream).unwrap();
        }
        let mut decoder = FrameDecoder::new();
        let mut input = &stream[..];
        let frames: Vec<RawFrame> =
            std::iter::from_fn(|| decoder.decode(&mut input).unwrap()).collect();
        assert_eq!(frames.len(), 5);
        for pair in frames.windows(2) {
            let end = pair[0].payload.as_ptr().wrapping_add(pair[0].payload.len());
            assert_eq!(
                end,
                pair[1].payload.as_ptr(),
                "payloads adjacent in one allocation"
            );
        }
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(frame.payload[..], [i as u8; 100][..]);
        }
    }

    #[test]
    fn decoder_at_a_frame_boundary_holds_no_memory() {
        let mut stream = Vec::new();
        encode_frame(Tag::V1, &[1; 300], &mut stream).unwrap();
        let mut decoder = FrameDecoder::new();
        let mut input = &stream[..];
        let frame = decoder.decode(&mut input).unwrap().unwrap();
        assert_eq!(decoder.arena_capacity(), 0);
        assert!(
            frame.payload.is_unique(),
            "decoder keeps no reference to the arena"
        );

        // A partial frame keeps its arena; release_idle does not drop it.
        let mut input = &stream[..200];
        assert_eq!(decoder.decode(&mut input), Ok(None));
        decoder.release_idle();
        assert!(decoder.arena_capacity() >= 196);
        assert_eq!(decoder.buffered(), 200);
        let mut input = &stream[200..];
        assert_eq!(
            decoder.decode(&mut input).unwrap().unwrap().payload[..],
            [1; 300][..]
        );
        assert_eq!(decoder.arena_capacity(), 0);
    }

    #[test]
    fn finish_reports_the_buffered_partial_frame() {
        let mut decoder = FrameDecoder::new();
        let mut input = &[1u8, 0][..];
        assert_eq!(decoder.decode(&mut input), Ok(None));
        assert_eq!(decoder.finish(), Err(CodecError::Truncated { buffered: 2 }));
        let mut input = &[0u8, 4, 1, 2][..];
        assert_eq!(decoder.decode(&mut input), Ok(None));
        assert_eq!(decoder.finish(), Err(CodecError::Truncated { buffered: 6 }));
    }
}
