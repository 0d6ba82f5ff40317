//! The fuzz targets' oracles: the incremental frame decoder against a one-pass
//! reference framer under arbitrary chunking, and `decode_message` against prost.
//! Every check panics on a disagreement, which the fuzzer reports as a crash.

use boundary_log_proxy::codec::{
    decode_message, CodecError, FrameDecoder, LogFrame, Message, RawFrame, Tag, HEADER_LEN,
    MAX_PAYLOAD_LEN,
};
use boundary_log_proxy::proto::agent::ReportBoundaryLogsRequest;
use boundary_log_proxy::proto::envelope::{boundary_message::Msg, BoundaryMessage};
use bytes::Bytes;
use prost::Message as _;

/// What framing a whole stream gives: its frames, then how it ends.
pub type Framed = (Vec<RawFrame>, Result<(), CodecError>);

/// The contract's framing done the plain way, over the whole stream at once.
pub fn reference_frames(stream: &[u8]) -> Framed {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        if rest.is_empty() {
            return (frames, Ok(()));
        }
        if rest.len() < HEADER_LEN {
            return (
                frames,
                Err(CodecError::Truncated {
                    buffered: rest.len(),
                }),
            );
        }
        let tag = match rest[0] {
            1 => Tag::V1,
            2 => Tag::V2,
            other => return (frames, Err(CodecError::UnsupportedTag(other))),
        };
        let len = u32::from_be_bytes([0, rest[1], rest[2], rest[3]]) as usize;
        if len > MAX_PAYLOAD_LEN {
            return (frames, Err(CodecError::TooLarge(len)));
        }
        if rest.len() < HEADER_LEN + len {
            return (
                frames,
                Err(CodecError::Truncated {
                    buffered: rest.len(),
                }),
            );
        }
        frames.push(RawFrame {
            tag,
            payload: Bytes::copy_from_slice(&rest[HEADER_LEN..HEADER_LEN + len]),
        });
        rest = &rest[HEADER_LEN + len..];
    }
}

/// FNV-1a: the chunking is a function of the input, so a crash reproduces.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Chunk lengths for `len` bytes: single bytes, small, io_uring-sized or
/// epoll-sized pieces, chosen by the input's hash.
fn chunking(data: &[u8]) -> impl Iterator<Item = usize> {
    let mut state = fnv(data) | 1;
    let max = match state % 5 {
        0 => 1,
        1 => 7,
        2 => 300,
        3 => 16 * 1024,
        _ => 64 * 1024,
    };
    std::iter::from_fn(move || {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        Some(1 + (state % max as u64) as usize)
    })
}

/// [`check_stream_chunked`] with chunk sizes drawn from the input's hash.
pub fn check_stream(stream: &[u8]) {
    check_stream_chunked(stream, chunking(stream));
}

/// Feeds `stream` to a `FrameDecoder` in chunks of the given sizes (then single
/// bytes) and checks it frames exactly as the reference does, never holds more
/// than one frame, and stops only when its input is used up; then decodes every
/// frame it cut.
pub fn check_stream_chunked(stream: &[u8], sizes: impl IntoIterator<Item = usize>) {
    let (expected_frames, expected_end) = reference_frames(stream);
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut rest = stream;
    let mut fatal = None;
    let mut sizes = sizes.into_iter().map(|n| n.max(1));
    while !rest.is_empty() && fatal.is_none() {
        let len = sizes.next().unwrap_or(1).min(rest.len());
        let (chunk, after) = rest.split_at(len);
        rest = after;
        let mut input = chunk;
        loop {
            let before = input.len();
            match decoder.decode(&mut input) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {
                    assert!(input.is_empty(), "None with input left");
                    break;
                }
                Err(error) => {
                    assert!(error.is_fatal(), "{error:?} from the framing");
                    assert_eq!(decoder.decode(&mut input), Err(error.clone()), "sticky");
                    fatal = Some(error);
                    break;
                }
            }
            assert!(input.len() < before || before == 0, "no progress");
            assert!(decoder.buffered() < HEADER_LEN + MAX_PAYLOAD_LEN);
            assert!(decoder.arena_capacity() <= MAX_PAYLOAD_LEN);
        }
        assert!(decoder.buffered() < HEADER_LEN + MAX_PAYLOAD_LEN);
        assert!(decoder.arena_capacity() <= MAX_PAYLOAD_LEN);
    }
    let end = match fatal {
        Some(error) => Err(error),
        None => decoder.finish(),
    };
    assert_eq!(frames, expected_frames);
    assert_eq!(end, expected_end);
    for frame in frames {
        check_payload(frame.tag, &frame.payload);
    }
}

/// A frame as the message target reads its input: byte 0 picks the tag (1 and 2
/// as on the wire, others by parity), bytes 4.. are the payload, so the shared
/// test vectors (whole frames) seed the corpus as they are.
pub fn check_message(data: &[u8]) {
    let Some(&first) = data.first() else { return };
    let tag = match first {
        1 => Tag::V1,
        2 => Tag::V2,
        other if other % 2 == 1 => Tag::V1,
        _ => Tag::V2,
    };
    check_payload(tag, data.get(HEADER_LEN..).unwrap_or(&[]));
}

/// `decode_message` against prost: accepted iff prost accepts (with a known
/// variant), and what it holds is what prost decodes.
pub fn check_payload(tag: Tag, payload: &[u8]) {
    let ours = decode_message(RawFrame {
        tag,
        payload: Bytes::copy_from_slice(payload),
    });
    if payload.len() > MAX_PAYLOAD_LEN {
        assert_eq!(ours, Err(CodecError::TooLarge(payload.len())));
        return;
    }
    let prost = match tag {
        Tag::V1 => ReportBoundaryLogsRequest::decode(payload).map(|r| Some(Ok(r))),
        Tag::V2 => BoundaryMessage::decode(payload).map(|m| m.msg.map(envelope_logs)),
    };
    match (ours, prost) {
        (Err(CodecError::Decode(_)), Err(_)) => {}
        (Err(CodecError::UnknownVariant), Ok(None)) => assert_eq!(tag, Tag::V2),
        (Ok(Message::Status(ours)), Ok(Some(Err(status)))) => assert_eq!(ours, status),
        (Ok(Message::Logs(ours)), Ok(Some(Ok(request)))) => check_log_frame(&ours, &request),
        (ours, prost) => panic!("disagree: ours {ours:?}, prost {prost:?}"),
    }
}

/// The envelope's variant: logs, or the status (as `Err`, to tell them apart).
fn envelope_logs(
    msg: Msg,
) -> Result<ReportBoundaryLogsRequest, boundary_log_proxy::proto::envelope::BoundaryStatus> {
    match msg {
        Msg::Logs(request) => Ok(request),
        Msg::Status(status) => Err(status),
    }
}

/// Key byte and minimal length varint of a length-delimited field.
fn len_field(field: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![field << 3 | 2];
    prost::encoding::encode_varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

fn check_log_frame(ours: &LogFrame, request: &ReportBoundaryLogsRequest) {
    assert_eq!(&ours.to_request(), request);
    assert_eq!(ours.log_count() as usize, request.logs.len());
    assert_eq!(ours.session_id(), request.session_id);
    assert_eq!(ours.confined_process_name(), request.confined_process_name);
    // Canonical layout: the log records, then the non-empty strings.
    let mut layout = ours.encoded_logs().to_vec();
    for (field, value) in [
        (2, &request.session_id),
        (3, &request.confined_process_name),
    ] {
        if !value.is_empty() {
            layout.extend(len_field(field, value.as_bytes()));
        }
    }
    assert_eq!(ours.encoded_request().as_ref(), &layout[..]);
    let seqs: Vec<i32> = request.logs.iter().map(|l| l.sequence_number).collect();
    assert_eq!(ours.sequence_numbers().collect::<Vec<_>>(), seqs);
    let summary = ours.seq();
    assert_eq!(summary.first, seqs.first().copied().unwrap_or(0));
    assert_eq!(summary.last, seqs.last().copied().unwrap_or(0));
    let contiguous = seqs.windows(2).all(|w| w[0].checked_add(1) == Some(w[1]));
    assert_eq!(summary.contiguous, contiguous);
    // The records alone are a request of those logs: they merge with others'.
    let records = ReportBoundaryLogsRequest::decode(ours.encoded_logs()).expect("records decode");
    assert_eq!(records.logs, request.logs);
    assert!(records.session_id.is_empty() && records.confined_process_name.is_empty());
}
