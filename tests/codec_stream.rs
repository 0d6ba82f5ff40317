//! Streams and round trips: any split of the input yields the same frames, frames the
//! crate encodes decode back to equal messages, and odd but valid payloads decode as
//! prost decodes them, held in canonical bytes.

use boundary_log_proxy::codec::{
    decode_message, decode_message_noting_superseded, encode_frame, CodecError, FrameDecoder,
    LogFrame, Message, RawFrame, SeqSummary, Superseded, Tag, MAX_PAYLOAD_LEN,
};
use boundary_log_proxy::proto::agent::ReportBoundaryLogsRequest;
use boundary_log_proxy::proto::envelope::{boundary_message::Msg, BoundaryMessage, BoundaryStatus};
use boundary_log_proxy::workload::{self, Workload};
use bytes::Bytes;
use prost::Message as _;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors");

fn stream_mixed() -> Vec<u8> {
    let path = format!("{VECTORS}/stream_mixed.bin");
    std::fs::read(&path).unwrap_or_else(|e| panic!("test vector missing: {path}: {e}"))
}

type Results = Vec<Result<Message, CodecError>>;

/// Feeds `chunks` in order; returns each frame's decoded message and the end state.
fn decode_chunks<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Results, Result<(), CodecError>) {
    let mut decoder = FrameDecoder::new();
    let mut results = Vec::new();
    for chunk in chunks {
        let mut input = chunk;
        while let Some(frame) = decoder.decode(&mut input).expect("no fatal error") {
            results.push(decode_message(frame));
        }
        assert!(
            input.is_empty(),
            "decode returns None only when input is used up"
        );
        assert!(decoder.buffered() <= 4 + MAX_PAYLOAD_LEN);
    }
    (results, decoder.finish())
}

fn logs(message: &Result<Message, CodecError>) -> &LogFrame {
    match message {
        Ok(Message::Logs(logs)) => logs,
        other => panic!("expected logs, got {other:?}"),
    }
}

fn frame(tag: Tag, payload: &[u8]) -> RawFrame {
    RawFrame {
        tag,
        payload: Bytes::copy_from_slice(payload),
    }
}

#[test]
fn stream_split_at_every_byte_position_yields_the_same_results() {
    let bytes = stream_mixed();
    let (whole, end) = decode_chunks([&bytes[..]]);
    assert_eq!(end, Ok(()));
    assert_eq!(whole.len(), 6, "six frames in stream_mixed.bin");
    for at in 0..=bytes.len() {
        let (split, end) = decode_chunks([&bytes[..at], &bytes[at..]]);
        assert_eq!(end, Ok(()), "split at {at}");
        assert_eq!(split, whole, "split at {at}");
    }
}

#[test]
fn stream_fed_byte_by_byte_yields_the_same_results() {
    let bytes = stream_mixed();
    let (whole, _) = decode_chunks([&bytes[..]]);
    let (bytewise, end) = decode_chunks(bytes.chunks(1));
    assert_eq!(end, Ok(()));
    assert_eq!(bytewise, whole);
}

#[test]
fn stream_cut_anywhere_inside_a_frame_is_truncated_with_those_bytes() {
    let bytes = stream_mixed();
    let (whole, _) = decode_chunks([&bytes[..]]);
    // Frame boundaries, from the decoded payload lengths.
    let mut boundaries = vec![0];
    let mut decoder = FrameDecoder::new();
    let mut input = &bytes[..];
    while let Some(f) = decoder.decode(&mut input).unwrap() {
        boundaries.push(boundaries.last().unwrap() + 4 + f.payload.len());
    }
    for cut in 0..bytes.len() {
        let (results, end) = decode_chunks([&bytes[..cut]]);
        let complete = boundaries.iter().filter(|&&b| b <= cut).count() - 1;
        assert_eq!(results[..], whole[..complete], "cut at {cut}");
        let last = boundaries[complete];
        if cut == last {
            assert_eq!(end, Ok(()));
        } else {
            assert_eq!(
                end,
                Err(CodecError::Truncated {
                    buffered: cut - last
                }),
                "cut at {cut}"
            );
        }
    }
}

#[test]
fn frames_encoded_by_the_crate_decode_back_to_equal_messages() {
    let mut w = Workload::new(11);
    let mut stream = Vec::new();
    let mut sent = Vec::new();
    for i in 0..60 {
        let session = w.session_id();
        let process = w.process_name();
        let tag = if i % 2 == 0 { Tag::V1 } else { Tag::V2 };
        let request = w.request(&session, process, i * 100, (i % 13) as usize);
        workload::append_frame(tag, &request, &mut stream).unwrap();
        sent.push(request);
    }
    // Uneven chunks, as a socket would deliver them.
    let mut rng = fastrand::Rng::with_seed(5);
    let mut chunks = Vec::new();
    let mut rest = &stream[..];
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rng.usize(1..=rest.len().min(3000)));
        chunks.push(chunk);
        rest = tail;
    }
    let (results, end) = decode_chunks(chunks);
    assert_eq!(end, Ok(()));
    assert_eq!(results.len(), sent.len());
    for (result, request) in results.iter().zip(&sent) {
        let frame = logs(result);
        assert_eq!(&frame.to_request(), request);
        assert_eq!(frame.encoded_request()[..], request.encode_to_vec()[..]);
        assert_eq!(frame.log_count() as usize, request.logs.len());
        assert_eq!(frame.session_id(), request.session_id);
        assert_eq!(frame.confined_process_name(), request.confined_process_name);
        let seqs: Vec<i32> = request.logs.iter().map(|l| l.sequence_number).collect();
        assert_eq!(frame.sequence_numbers().collect::<Vec<_>>(), seqs);
        if let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) {
            assert_eq!(
                frame.seq(),
                SeqSummary {
                    first,
                    last,
                    contiguous: true
                }
            );
        }
    }
}

/// A workload request whose payload under `tag` is exactly `len` bytes.
fn request_of_payload_len(tag: Tag, len: usize) -> ReportBoundaryLogsRequest {
    let base = workload::request("7d1f5a7e-3c2b-4f7e-9a51-0c6e2d9b8a41", "codex", 0, 200);
    let short = workload::payload(tag, &base).len();
    assert!(short < len - 300);
    for pad in (len - short).saturating_sub(300)..len - short {
        let mut request = base.clone();
        request.session_id.push_str(&"x".repeat(pad));
        if workload::payload(tag, &request).len() == len {
            return request;
        }
    }
    panic!("no padding gives a {len}-byte payload");
}

#[test]
fn payload_of_exactly_the_limit_round_trips_and_one_more_is_refused() {
    for tag in [Tag::V1, Tag::V2] {
        let request = request_of_payload_len(tag, MAX_PAYLOAD_LEN);
        let bytes = workload::frame(tag, &request);
        assert_eq!(bytes.len(), 4 + MAX_PAYLOAD_LEN);
        let (results, end) = decode_chunks([&bytes[..]]);
        assert_eq!(end, Ok(()));
        assert_eq!(logs(&results[0]).to_request(), request);

        let mut over = request_of_payload_len(tag, MAX_PAYLOAD_LEN);
        over.session_id.push('x');
        let payload = workload::payload(tag, &over);
        assert_eq!(payload.len(), MAX_PAYLOAD_LEN + 1);
        let mut out = Vec::new();
        assert_eq!(
            encode_frame(tag, &payload, &mut out),
            Err(CodecError::TooLarge(MAX_PAYLOAD_LEN + 1))
        );
        assert_eq!(
            workload::append_frame(tag, &over, &mut out),
            Err(CodecError::TooLarge(MAX_PAYLOAD_LEN + 1))
        );
        assert!(out.is_empty());
    }
}

#[test]
fn log_frame_from_a_request_holds_its_encoding() {
    let request = workload::request("s-2", "codex", 3, 5);
    let frame = LogFrame::from_request(&request).unwrap();
    assert_eq!(frame.to_request(), request);
    assert_eq!(frame.encoded_request()[..], request.encode_to_vec()[..]);
    assert_eq!(
        frame.seq(),
        SeqSummary {
            first: 3,
            last: 7,
            contiguous: true
        }
    );
    let too_big = workload::request("s-2", "codex", 0, 400);
    assert!(matches!(
        LogFrame::from_request(&too_big),
        Err(CodecError::TooLarge(_))
    ));
}

#[test]
fn canonical_payloads_are_held_without_a_copy() {
    let request = workload::request("s-1", "copilot", 7, 10);
    for tag in [Tag::V1, Tag::V2] {
        let payload = Bytes::from(workload::payload(tag, &request));
        let range = payload.as_ptr_range();
        let message = decode_message(RawFrame {
            tag,
            payload: payload.clone(),
        });
        let held = logs(&message).encoded_request();
        assert!(
            range.contains(&held.as_ptr()),
            "{tag:?}: bytes point into the payload"
        );
        assert_eq!(held[..], request.encode_to_vec()[..]);
    }
}

/// Raw protobuf field helpers for hand-shaped payloads.
fn field(tag: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

fn log_record(seq: i32) -> Vec<u8> {
    workload::request("", "", seq, 1).logs[0].encode_to_vec()
}

#[test]
fn scattered_fields_decode_as_prost_does_into_canonical_bytes() {
    let payload = [
        field(2, b"first-session"),
        field(1, &log_record(3)),
        vec![0x98, 0x06, 0x2A], // unknown varint field 99
        field(3, b"codex"),
        field(1, &log_record(4)),
        field(2, b"last-session"),
        field(7, b"unknown bytes"),
        field(1, &log_record(9)),
        field(3, b""),
    ]
    .concat();
    let expected = ReportBoundaryLogsRequest::decode(&payload[..]).unwrap();
    assert_eq!(expected.confined_process_name, "", "last occurrence wins");
    let message = decode_message(frame(Tag::V1, &payload));
    let frame = logs(&message);
    assert_eq!(frame.to_request(), expected);
    assert_eq!(frame.encoded_request()[..], expected.encode_to_vec()[..]);
    assert_eq!(frame.session_id(), "last-session");
    assert_eq!(frame.confined_process_name(), "");
    assert_eq!(frame.log_count(), 3);
    assert_eq!(
        frame.seq(),
        SeqSummary {
            first: 3,
            last: 9,
            contiguous: false
        }
    );
    assert_eq!(frame.sequence_numbers().collect::<Vec<_>>(), [3, 4, 9]);
    let records: Vec<u8> = [
        field(1, &log_record(3)),
        field(1, &log_record(4)),
        field(1, &log_record(9)),
    ]
    .concat();
    assert_eq!(frame.encoded_logs(), &records[..]);
}

#[test]
fn repeated_envelope_variants_merge_and_the_last_variant_wins() {
    let part = |seq: i32, session: &str| {
        let request = workload::request(session, "codex", seq, 2);
        field(1, &request.encode_to_vec())
    };
    let status = field(
        2,
        &BoundaryStatus {
            dropped_channel_full: 4,
            dropped_batch_full: 1,
        }
        .encode_to_vec(),
    );

    let merged = [part(0, "a"), vec![0x20, 0x01], part(2, "b")].concat();
    let expected = BoundaryMessage::decode(&merged[..]).unwrap();
    let Some(Msg::Logs(expected)) = expected.msg else {
        panic!("prost: logs")
    };
    assert_eq!(expected.logs.len(), 4);
    let message = decode_message(frame(Tag::V2, &merged));
    assert_eq!(logs(&message).to_request(), expected);
    assert_eq!(
        logs(&message).seq(),
        SeqSummary {
            first: 0,
            last: 3,
            contiguous: true
        }
    );

    let reset = [part(0, "a"), status.clone(), part(10, "c")].concat();
    let Some(Msg::Logs(expected)) = BoundaryMessage::decode(&reset[..]).unwrap().msg else {
        panic!("prost: logs")
    };
    assert_eq!(
        logs(&decode_message(frame(Tag::V2, &reset))).to_request(),
        expected
    );
    assert_eq!(expected.logs[0].sequence_number, 10);

    let status_last = [part(0, "a"), status.clone(), status.clone()].concat();
    assert_eq!(
        decode_message(frame(Tag::V2, &status_last)),
        Ok(Message::Status(BoundaryStatus {
            dropped_channel_full: 4,
            dropped_batch_full: 1
        }))
    );

    // What a later variant replaced is reported, so the intake can count it.
    let superseded = |payload: &[u8]| {
        decode_message_noting_superseded(frame(Tag::V2, payload))
            .unwrap()
            .1
    };
    assert_eq!(
        superseded(&merged),
        Superseded::default(),
        "merged, not replaced"
    );
    assert_eq!(
        superseded(&reset),
        Superseded {
            logs: 2,
            statuses: 1
        },
        "two logs, then the status, replaced"
    );
    assert_eq!(
        superseded(&status_last),
        Superseded {
            logs: 2,
            statuses: 0
        },
        "a status merging into a status replaces nothing"
    );
    let two_logs_then_status = [part(0, "a"), part(2, "a"), status].concat();
    assert_eq!(
        superseded(&two_logs_then_status),
        Superseded {
            logs: 4,
            statuses: 0
        }
    );
}

#[test]
fn sequence_summary_reports_gaps_and_empty_frames() {
    let mut request = workload::request("s", "codex", 5, 4);
    let message = decode_message(frame(Tag::V1, &request.encode_to_vec()));
    assert_eq!(
        logs(&message).seq(),
        SeqSummary {
            first: 5,
            last: 8,
            contiguous: true
        }
    );

    request.logs[2].sequence_number = 20;
    let message = decode_message(frame(Tag::V1, &request.encode_to_vec()));
    assert_eq!(
        logs(&message).seq(),
        SeqSummary {
            first: 5,
            last: 8,
            contiguous: false
        }
    );
    assert_eq!(
        logs(&message).sequence_numbers().collect::<Vec<_>>(),
        [5, 6, 20, 8]
    );

    let message = decode_message(frame(Tag::V2, &field(1, &[])));
    let empty = logs(&message);
    assert_eq!(
        (empty.log_count(), empty.seq()),
        (
            0,
            SeqSummary {
                first: 0,
                last: 0,
                contiguous: true
            }
        )
    );
    assert!(empty.encoded_request().is_empty());
}

#[test]
fn invalid_utf8_in_any_string_is_a_decode_error() {
    let mut bad_url = workload::request("s", "codex", 0, 1).encode_to_vec();
    let at = bad_url.windows(8).position(|w| w == b"https://").unwrap();
    bad_url[at] = 0xFF;
    assert!(ReportBoundaryLogsRequest::decode(&bad_url[..]).is_err());
    let err = decode_message(frame(Tag::V1, &bad_url)).unwrap_err();
    assert!(matches!(err, CodecError::Decode(_)), "{err:?}");

    let bad_session = field(2, &[0xC3, 0x28]);
    assert!(matches!(
        decode_message(frame(Tag::V1, &bad_session)),
        Err(CodecError::Decode(_))
    ));
}
