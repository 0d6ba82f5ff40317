//! The shared test vectors (encoded by Google's protobuf runtime): every file the
//! manifest lists decodes to its named outcome, and every vector file is listed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use boundary_log_proxy::codec::{
    decode_message, CodecError, FrameDecoder, Message, RawFrame, HEADER_LEN, MAX_PAYLOAD_LEN,
};
use boundary_log_proxy::proto::agent::boundary_log::{HttpRequest, Resource};
use boundary_log_proxy::proto::agent::{BoundaryLog, ReportBoundaryLogsRequest};
use boundary_log_proxy::proto::envelope::BoundaryStatus;
use serde_json::Value;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors");

struct Vector {
    file: String,
    outcome: String,
    bytes: Vec<u8>,
    expect: Value,
}

fn manifest() -> Value {
    let path = Path::new(VECTORS).join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("test vectors missing: {}: {e}", path.display()));
    serde_json::from_str(&text).expect("manifest.json is JSON")
}

fn vectors() -> Vec<Vector> {
    let manifest = manifest();
    let list = manifest["vectors"]
        .as_array()
        .expect("manifest lists vectors");
    assert!(!list.is_empty(), "manifest lists no vectors");
    list.iter()
        .map(|entry| {
            let file = entry["file"]
                .as_str()
                .expect("vector has a file")
                .to_owned();
            let path = Path::new(VECTORS).join(&file);
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("vector {} missing: {e}", path.display()));
            if let Some(len) = entry["bytes"].as_u64() {
                assert_eq!(
                    bytes.len() as u64,
                    len,
                    "{file}: size differs from manifest"
                );
            }
            Vector {
                file,
                outcome: entry["outcome"]
                    .as_str()
                    .expect("vector has an outcome")
                    .to_owned(),
                bytes,
                expect: entry["expect"].clone(),
            }
        })
        .collect()
}

fn vector(name: &str) -> Vector {
    vectors()
        .into_iter()
        .find(|v| v.file == name)
        .unwrap_or_else(|| panic!("{name} not in manifest"))
}

// ---- protobuf JSON mapping -> prost -------------------------------------------------

/// The field under its proto name or its lowerCamelCase JSON name.
fn field<'a>(object: &'a Value, snake: &str) -> Option<&'a Value> {
    let camel: String = snake
        .split('_')
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part.to_owned()
            } else {
                let mut chars = part.chars();
                chars
                    .next()
                    .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            }
        })
        .collect();
    object
        .get(snake)
        .or_else(|| object.get(&camel))
        .filter(|v| !v.is_null())
}

fn string(object: &Value, name: &str) -> String {
    field(object, name)
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{name} is not a string"))
                .to_owned()
        })
        .unwrap_or_default()
}

/// Integers map to JSON numbers or (int64 always) decimal strings.
fn integer(object: &Value, name: &str) -> i64 {
    match field(object, name) {
        None => 0,
        Some(Value::Number(n)) => n.as_i64().unwrap_or_else(|| panic!("{name}: {n}")),
        Some(Value::String(s)) => s.parse().unwrap_or_else(|e| panic!("{name}: {s}: {e}")),
        Some(other) => panic!("{name} is not an integer: {other}"),
    }
}

fn log_from_json(log: &Value) -> BoundaryLog {
    BoundaryLog {
        allowed: field(log, "allowed").is_some_and(|v| v.as_bool().expect("allowed is a bool")),
        time: field(log, "time").map(|t| {
            let text = t.as_str().expect("time is an RFC 3339 string");
            prost_types::Timestamp::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
        }),
        sequence_number: integer(log, "sequence_number") as i32,
        resource: field(log, "http_request").map(|http| {
            Resource::HttpRequest(HttpRequest {
                method: string(http, "method"),
                url: string(http, "url"),
                matched_rule: string(http, "matched_rule"),
            })
        }),
    }
}

fn request_from_json(request: &Value) -> ReportBoundaryLogsRequest {
    ReportBoundaryLogsRequest {
        logs: field(request, "logs")
            .map(|logs| {
                logs.as_array()
                    .expect("logs is an array")
                    .iter()
                    .map(log_from_json)
                    .collect()
            })
            .unwrap_or_default(),
        session_id: string(request, "session_id"),
        confined_process_name: string(request, "confined_process_name"),
    }
}

fn status_from_json(status: &Value) -> BoundaryStatus {
    BoundaryStatus {
        dropped_channel_full: integer(status, "dropped_channel_full"),
        dropped_batch_full: integer(status, "dropped_batch_full"),
    }
}

// ---- decoding a byte stream ---------------------------------------------------------

/// Every frame of a whole stream, then what `finish` says.
fn frames(bytes: &[u8]) -> (Vec<RawFrame>, Result<(), CodecError>) {
    let mut decoder = FrameDecoder::new();
    let mut input = bytes;
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode(&mut input).expect("stream frames cleanly") {
        frames.push(frame);
    }
    assert!(input.is_empty());
    (frames, decoder.finish())
}

fn decoded_requests(bytes: &[u8]) -> Vec<ReportBoundaryLogsRequest> {
    let (frames, end) = frames(bytes);
    assert_eq!(end, Ok(()));
    frames
        .into_iter()
        .map(|frame| match decode_message(frame) {
            Ok(Message::Logs(logs)) => {
                assert_eq!(logs.log_count() as usize, logs.to_request().logs.len());
                logs.to_request()
            }
            other => panic!("expected logs, got {other:?}"),
        })
        .collect()
}

/// The fatal error the contract assigns to a stream's first header.
fn expected_close_error(bytes: &[u8]) -> CodecError {
    let header: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
    let len = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
    match header[0] {
        1 | 2 if len > MAX_PAYLOAD_LEN => CodecError::TooLarge(len),
        1 | 2 => panic!("close vector with an acceptable header {header:?}"),
        tag => CodecError::UnsupportedTag(tag),
    }
}

// ---- one test per outcome -----------------------------------------------------------

fn check(v: &Vector) {
    match v.outcome.as_str() {
        "logs" => check_logs(v),
        "close" => check_close(v),
        "skip" => check_skip(v),
        "ignore" => check_ignore(v),
        "status" => check_status(v),
        "stream" => check_stream(v),
        "truncated" => check_truncated(v),
        other => panic!("{}: unknown outcome {other}", v.file),
    }
}

fn check_logs(v: &Vector) {
    let expected: Vec<ReportBoundaryLogsRequest> = v
        .expect
        .as_array()
        .unwrap_or_else(|| panic!("{}: expect is a list of requests", v.file))
        .iter()
        .map(request_from_json)
        .collect();
    assert_eq!(decoded_requests(&v.bytes), expected, "{}", v.file);
}

fn check_close(v: &Vector) {
    let expected = expected_close_error(&v.bytes);
    let mut decoder = FrameDecoder::new();
    let mut input = &v.bytes[..];
    let err = decoder.decode(&mut input).expect_err(&v.file);
    assert_eq!(err, expected, "{}", v.file);
    assert!(err.is_fatal(), "{}", v.file);
    assert_eq!(
        input.len(),
        v.bytes.len() - HEADER_LEN,
        "{}: payload left unread",
        v.file
    );
}

fn check_skip(v: &Vector) {
    // The frame is skipped and the same connection goes on: a second copy of the
    // vector after it frames and fails the same way.
    let doubled = [&v.bytes[..], &v.bytes[..]].concat();
    let (frames, end) = frames(&doubled);
    assert_eq!(end, Ok(()));
    assert_eq!(frames.len(), 2, "{}", v.file);
    for frame in frames {
        let err = decode_message(frame).expect_err(&v.file);
        assert!(matches!(err, CodecError::Decode(_)), "{}: {err:?}", v.file);
        assert!(!err.is_fatal());
        assert_eq!(err.reason(), "decode_error");
    }
}

fn check_ignore(v: &Vector) {
    let (frames, end) = frames(&v.bytes);
    assert_eq!(end, Ok(()));
    assert_eq!(frames.len(), 1, "{}", v.file);
    for frame in frames {
        assert_eq!(
            decode_message(frame),
            Err(CodecError::UnknownVariant),
            "{}",
            v.file
        );
    }
}

fn check_status(v: &Vector) {
    let (frames, end) = frames(&v.bytes);
    assert_eq!(end, Ok(()));
    let statuses: Vec<Message> = frames
        .into_iter()
        .map(|f| decode_message(f).unwrap())
        .collect();
    assert_eq!(
        statuses,
        [Message::Status(status_from_json(&v.expect))],
        "{}",
        v.file
    );
}

/// What the proxy does with one frame, in the terms the manifest uses.
#[derive(Debug, PartialEq)]
enum Outcome {
    Forward(ReportBoundaryLogsRequest),
    Skip,
    Status(BoundaryStatus),
    Ignore,
}

fn check_stream(v: &Vector) {
    let (frames, end) = frames(&v.bytes);
    assert_eq!(end, Ok(()));
    let outcomes: Vec<Outcome> = frames
        .into_iter()
        .map(|frame| match decode_message(frame) {
            Ok(Message::Logs(logs)) => Outcome::Forward(logs.to_request()),
            Ok(Message::Status(status)) => Outcome::Status(status),
            Err(CodecError::UnknownVariant) => Outcome::Ignore,
            Err(CodecError::Decode(_)) => Outcome::Skip,
            Err(fatal) => panic!("{}: fatal {fatal:?}", v.file),
        })
        .collect();

    let mut requests = v.expect["requests"]
        .as_array()
        .expect("stream expects requests")
        .iter()
        .map(request_from_json);
    assert_eq!(
        v.expect["skipped"].as_u64(),
        Some(1),
        "{}: manifest changed",
        v.file
    );
    // Frame order as the manifest describes it: TagV1 logs, garbage, TagV2 logs,
    // status, unknown variant, TagV2 logs.
    let expected = vec![
        Outcome::Forward(requests.next().unwrap()),
        Outcome::Skip,
        Outcome::Forward(requests.next().unwrap()),
        Outcome::Status(status_from_json(&v.expect["status"])),
        Outcome::Ignore,
        Outcome::Forward(requests.next().unwrap()),
    ];
    assert!(
        requests.next().is_none(),
        "{}: more requests than expected",
        v.file
    );
    assert_eq!(outcomes, expected, "{}", v.file);
}

fn check_truncated(v: &Vector) {
    let (frames, end) = frames(&v.bytes);
    assert!(frames.is_empty(), "{}: nothing is forwarded", v.file);
    assert_eq!(
        end,
        Err(CodecError::Truncated {
            buffered: v.bytes.len()
        }),
        "{}",
        v.file
    );
    assert_eq!(end.unwrap_err().reason(), "truncated");
}

#[test]
fn every_manifest_vector_has_its_named_outcome() {
    let all = vectors();
    for v in &all {
        check(v);
    }
    let outcomes: BTreeSet<&str> = all.iter().map(|v| v.outcome.as_str()).collect();
    for outcome in [
        "logs",
        "close",
        "skip",
        "ignore",
        "status",
        "stream",
        "truncated",
    ] {
        assert!(outcomes.contains(outcome), "no vector exercises {outcome}");
    }
}

#[test]
fn every_vector_file_is_in_the_manifest() {
    let listed: BTreeSet<String> = vectors().into_iter().map(|v| v.file).collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(VECTORS)
        .unwrap_or_else(|e| panic!("test vectors missing: {VECTORS}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|path: &PathBuf| path.extension().is_some_and(|ext| ext == "bin"))
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let unlisted: Vec<&String> = on_disk.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "vector files not in manifest: {unlisted:?}"
    );
    assert!(!on_disk.is_empty());
}

#[test]
fn largest_vector_payload_is_exactly_the_limit() {
    let v = vector("v2_max_size.bin");
    let (frames, _) = frames(&v.bytes);
    assert_eq!(frames[0].payload.len(), MAX_PAYLOAD_LEN);
    check_logs(&v);
}

#[test]
fn unknown_top_level_field_is_dropped_from_the_forwarded_bytes() {
    let v = vector("v1_unknown_field.bin");
    let (mut frames, _) = frames(&v.bytes);
    let Ok(Message::Logs(logs)) = decode_message(frames.remove(0)) else {
        panic!("v1_unknown_field.bin decodes to logs");
    };
    let request = logs.to_request();
    use prost::Message as _;
    assert_eq!(logs.encoded_request()[..], request.encode_to_vec()[..]);
    assert_eq!(logs.session_id(), "7d1f5a7e-3c2b-4f7e-9a51-0c6e2d9b8a41");
    assert_eq!(logs.confined_process_name(), "claude-code");
    assert_eq!(logs.sequence_numbers().collect::<Vec<_>>(), [100, 101]);
}
