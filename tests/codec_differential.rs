//! Differential tests against prost: random requests in odd wire shapes (unknown
//! fields and groups, shuffled and repeated fields, split oneofs, several envelope
//! segments) and random mutations of them. `decode_message` must accept exactly what
//! prost accepts and, when it does, hold the request prost decodes.

use boundary_log_proxy::codec::{decode_message, CodecError, LogFrame, Message, RawFrame, Tag};
use boundary_log_proxy::proto::agent::boundary_log::{HttpRequest, Resource};
use boundary_log_proxy::proto::agent::{BoundaryLog, ReportBoundaryLogsRequest};
use boundary_log_proxy::proto::envelope::{boundary_message::Msg, BoundaryMessage, BoundaryStatus};
use boundary_log_proxy::workload;
use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};
use prost::Message as _;

// ---- building odd wire shapes --------------------------------------------------------

fn len_field(tag: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(tag, WireType::LengthDelimited, &mut out);
    encode_varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

/// Splits valid encoded message bytes into its top-level fields (key included).
fn split_fields(bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
    let mut fields = Vec::new();
    let mut buf = bytes;
    while !buf.is_empty() {
        let start = bytes.len() - buf.len();
        let (tag, wire) = decode_key(&mut buf).unwrap();
        match wire {
            WireType::Varint => drop(decode_varint(&mut buf).unwrap()),
            WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).unwrap() as usize;
                buf = &buf[len..];
            }
            other => panic!("generated messages use no {other:?}"),
        }
        fields.push((tag, bytes[start..bytes.len() - buf.len()].to_vec()));
    }
    fields
}

/// The bodies of a run of field-1 records, or `None` if anything else is there.
fn split_records(mut buf: &[u8]) -> Option<Vec<&[u8]>> {
    let mut records = Vec::new();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).ok()?;
        if (tag, wire) != (1, WireType::LengthDelimited) {
            return None;
        }
        let len = decode_varint(&mut buf).ok()? as usize;
        records.push(buf.get(..len)?);
        buf = &buf[len..];
    }
    Some(records)
}

/// A random unknown field: any wire type, groups nested up to `depth`.
fn unknown_field(rng: &mut fastrand::Rng, depth: u32) -> Vec<u8> {
    let tag = [5, 6, 15, 16, 99, 111, 2047, 536_870_911][rng.usize(..8)];
    let mut out = Vec::new();
    match rng.u8(..5) {
        0 => {
            encode_key(tag, WireType::Varint, &mut out);
            encode_varint(rng.u64(..) >> rng.u32(..64), &mut out);
        }
        1 => {
            encode_key(tag, WireType::ThirtyTwoBit, &mut out);
            out.extend_from_slice(&rng.u32(..).to_le_bytes());
        }
        2 => {
            encode_key(tag, WireType::SixtyFourBit, &mut out);
            out.extend_from_slice(&rng.u64(..).to_le_bytes());
        }
        3 if depth > 0 => {
            encode_key(tag, WireType::StartGroup, &mut out);
            for _ in 0..rng.usize(..3) {
                out.extend(unknown_field(rng, depth - 1));
            }
            encode_key(tag, WireType::EndGroup, &mut out);
        }
        _ => {
            let body: Vec<u8> = (0..rng.usize(..6)).map(|_| rng.u8(..)).collect();
            out = len_field(tag, &body);
        }
    }
    out
}

/// Reorders, repeats and pads a message's fields with unknown ones.
fn scramble(rng: &mut fastrand::Rng, mut fields: Vec<Vec<u8>>) -> Vec<u8> {
    if rng.u8(..4) == 0 {
        rng.shuffle(&mut fields);
    }
    if !fields.is_empty() && rng.u8(..4) == 0 {
        let copy = fields[rng.usize(..fields.len())].clone();
        fields.insert(rng.usize(..=fields.len()), copy);
    }
    for _ in 0..rng.usize(..3) {
        if rng.bool() {
            fields.insert(rng.usize(..=fields.len()), unknown_field(rng, 2));
        }
    }
    fields.concat()
}

/// A log record body in an odd shape; a present `http_request` may be split into
/// two occurrences that prost merges.
fn shape_log(rng: &mut fastrand::Rng, log: &BoundaryLog) -> Vec<u8> {
    let mut fields = Vec::new();
    for (tag, bytes) in split_fields(&log.encode_to_vec()) {
        if tag == 3 && rng.u8(..3) == 0 {
            let Some(Resource::HttpRequest(http)) = &log.resource else {
                unreachable!()
            };
            let parts: Vec<Vec<u8>> = split_fields(&http.encode_to_vec())
                .into_iter()
                .map(|f| f.1)
                .collect();
            let at = rng.usize(..=parts.len());
            fields.push(len_field(3, &scramble(rng, parts[..at].to_vec())));
            fields.push(len_field(3, &scramble(rng, parts[at..].to_vec())));
        } else {
            fields.push(bytes);
        }
    }
    scramble(rng, fields)
}

/// The top-level fields of a request in an odd shape: shaped logs, and sometimes
/// stale or empty string values that a later occurrence overrides.
fn shape_request(rng: &mut fastrand::Rng, request: &ReportBoundaryLogsRequest) -> Vec<Vec<u8>> {
    let mut fields: Vec<Vec<u8>> = request
        .logs
        .iter()
        .map(|log| len_field(1, &shape_log(rng, log)))
        .collect();
    if rng.u8(..4) == 0 {
        fields.insert(
            0,
            len_field(2, if rng.bool() { b"stale-session" } else { b"" }),
        );
    }
    if rng.u8(..6) == 0 {
        fields.push(len_field(2, b""));
    }
    for (tag, value) in [
        (2, &request.session_id),
        (3, &request.confined_process_name),
    ] {
        if !value.is_empty() {
            fields.push(len_field(tag, value.as_bytes()));
        }
    }
    if rng.u8(..4) == 0 {
        rng.shuffle(&mut fields);
    }
    for _ in 0..rng.usize(..3) {
        if rng.bool() {
            fields.insert(rng.usize(..=fields.len()), unknown_field(rng, 2));
        }
    }
    fields
}

/// A TagV2 envelope: the request split over one to three `logs` occurrences, perhaps
/// after a status that the logs replace, with unknown fields beside.
fn shape_envelope(
    rng: &mut fastrand::Rng,
    request_fields: Vec<Vec<u8>>,
    status: &BoundaryStatus,
) -> Vec<u8> {
    let mut out = Vec::new();
    if rng.u8(..4) == 0 {
        out.extend(len_field(2, &status.encode_to_vec()));
    }
    let segments = rng.usize(1..=3);
    let per = request_fields.len().div_ceil(segments).max(1);
    let mut chunks: Vec<Vec<u8>> = request_fields.chunks(per).map(|c| c.concat()).collect();
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    for chunk in chunks {
        out.extend(len_field(1, &chunk));
        if rng.u8(..4) == 0 {
            out.extend(unknown_field(rng, 2));
        }
    }
    if rng.u8(..6) == 0 {
        out.extend(len_field(2, &status.encode_to_vec()));
    }
    out
}

// ---- random content ------------------------------------------------------------------

fn arb_log() -> impl Strategy<Value = BoundaryLog> {
    (
        any::<bool>(),
        proptest::option::of((any::<i64>(), any::<i32>())),
        proptest::option::of(("[A-Z]{0,7}", ".{0,24}", ".{0,12}")),
        any::<i32>(),
    )
        .prop_map(|(allowed, time, http, sequence_number)| BoundaryLog {
            allowed,
            time: time.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
            sequence_number,
            resource: http.map(|(method, url, matched_rule)| {
                Resource::HttpRequest(HttpRequest {
                    method,
                    url,
                    matched_rule,
                })
            }),
        })
}

fn arb_request() -> impl Strategy<Value = ReportBoundaryLogsRequest> {
    (
        proptest::collection::vec(arb_log(), 0..6),
        ".{0,12}",
        "[a-z-]{0,12}",
    )
        .prop_map(
            |(logs, session_id, confined_process_name)| ReportBoundaryLogsRequest {
                logs,
                session_id,
                confined_process_name,
            },
        )
}

/// A shaped payload under a random tag.
fn arb_payload() -> impl Strategy<Value = (Tag, Vec<u8>)> {
    (
        arb_request(),
        any::<u64>(),
        any::<bool>(),
        any::<(i64, i64)>(),
    )
        .prop_map(|(request, seed, v2, status)| {
            let mut rng = fastrand::Rng::with_seed(seed);
            let fields = shape_request(&mut rng, &request);
            if v2 {
                let status = BoundaryStatus {
                    dropped_channel_full: status.0,
                    dropped_batch_full: status.1,
                };
                (Tag::V2, shape_envelope(&mut rng, fields, &status))
            } else {
                (Tag::V1, fields.concat())
            }
        })
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Set(at, b)),
        // Printable bytes mostly keep strings valid, so more mutants decode.
        (any::<usize>(), 0x20u8..0x7F).prop_map(|(at, b)| Mutation::Set(at, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    match *mutation {
        Mutation::Insert(at, b) => bytes.insert(at % (len + 1), b),
        _ if len == 0 => {}
        Mutation::Set(at, b) => bytes[at % len] = b,
        Mutation::Delete(at) => drop(bytes.remove(at % len)),
        Mutation::Truncate(at) => bytes.truncate(at % len),
    }
}

// ---- the oracle ----------------------------------------------------------------------

/// What prost makes of a payload, in `decode_message`'s terms.
fn prost_decode(tag: Tag, payload: &[u8]) -> Result<Message, ()> {
    enum Decoded {
        Logs(ReportBoundaryLogsRequest),
        Status(BoundaryStatus),
        None,
    }
    let decoded = match tag {
        Tag::V1 => ReportBoundaryLogsRequest::decode(payload).map(Decoded::Logs),
        Tag::V2 => BoundaryMessage::decode(payload).map(|m| match m.msg {
            Some(Msg::Logs(request)) => Decoded::Logs(request),
            Some(Msg::Status(status)) => Decoded::Status(status),
            None => Decoded::None,
        }),
    };
    match decoded {
        Err(_) => Err(()),
        Ok(Decoded::Status(status)) => Ok(Message::Status(status)),
        Ok(Decoded::None) => Err(()),
        Ok(Decoded::Logs(request)) => {
            // Re-decoding the canonical encoding gives a LogFrame to compare with.
            match decode_message(RawFrame {
                tag: Tag::V1,
                payload: Bytes::from(request.encode_to_vec()),
            }) {
                Ok(message) => Ok(message),
                Err(err) => panic!("canonical encoding rejected: {err:?}"),
            }
        }
    }
}

fn check_against_prost(tag: Tag, payload: &[u8]) -> Result<(), TestCaseError> {
    let ours = decode_message(RawFrame {
        tag,
        payload: Bytes::copy_from_slice(payload),
    });
    let prost_ok = match tag {
        Tag::V1 => ReportBoundaryLogsRequest::decode(payload).is_ok(),
        Tag::V2 => BoundaryMessage::decode(payload).is_ok(),
    };
    let prost_variant =
        tag == Tag::V1 || BoundaryMessage::decode(payload).is_ok_and(|m| m.msg.is_some());
    match &ours {
        Err(CodecError::Decode(_)) => prop_assert!(!prost_ok, "we reject what prost accepts"),
        Err(CodecError::UnknownVariant) => prop_assert!(prost_ok && !prost_variant),
        Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        Ok(_) => prop_assert!(prost_ok && prost_variant, "we accept what prost rejects"),
    }
    let Ok(message) = ours else { return Ok(()) };
    let expected = prost_decode(tag, payload).expect("prost accepted");
    match (&message, &expected) {
        (Message::Logs(ours), Message::Logs(canonical)) => check_log_frame(ours, canonical)?,
        _ => prop_assert_eq!(&message, &expected),
    }
    Ok(())
}

fn check_log_frame(ours: &LogFrame, canonical: &LogFrame) -> Result<(), TestCaseError> {
    let request = canonical.to_request();
    prop_assert_eq!(&ours.to_request(), &request);
    // Canonical layout: the records (kept as received), then the non-empty strings.
    let mut layout = ours.encoded_logs().to_vec();
    for (tag, value) in [
        (2, &request.session_id),
        (3, &request.confined_process_name),
    ] {
        if !value.is_empty() {
            layout.extend(len_field(tag, value.as_bytes()));
        }
    }
    prop_assert_eq!(ours.encoded_request().as_ref(), &layout[..]);
    prop_assert!(
        split_records(ours.encoded_logs()).is_some(),
        "only field-1 records"
    );
    if canonical.encoded_logs() == ours.encoded_logs() {
        prop_assert_eq!(ours.encoded_request(), canonical.encoded_request());
    }
    prop_assert_eq!(ours.log_count() as usize, request.logs.len());
    prop_assert_eq!(ours.session_id(), request.session_id.as_str());
    prop_assert_eq!(
        ours.confined_process_name(),
        request.confined_process_name.as_str()
    );
    let seqs: Vec<i32> = request.logs.iter().map(|l| l.sequence_number).collect();
    prop_assert_eq!(ours.sequence_numbers().collect::<Vec<_>>(), seqs.clone());
    let seq = ours.seq();
    prop_assert_eq!(seq.first, seqs.first().copied().unwrap_or(0));
    prop_assert_eq!(seq.last, seqs.last().copied().unwrap_or(0));
    let contiguous = seqs.windows(2).all(|w| w[0].checked_add(1) == Some(w[1]));
    prop_assert_eq!(seq.contiguous, contiguous);

    // The records concatenate with another frame's into one merged request.
    let other = workload::request("merged-session", "codex", 40, 3);
    let other_frame = match decode_message(RawFrame {
        tag: Tag::V1,
        payload: Bytes::from(other.encode_to_vec()),
    }) {
        Ok(Message::Logs(frame)) => frame,
        other => panic!("{other:?}"),
    };
    let merged = [
        ours.encoded_logs(),
        other_frame.encoded_logs(),
        &len_field(2, b"merged-session"),
        &len_field(3, b"codex"),
    ]
    .concat();
    let merged = ReportBoundaryLogsRequest::decode(&merged[..]).expect("merged records decode");
    let mut expected_logs = request.logs.clone();
    expected_logs.extend(other.logs);
    prop_assert_eq!(merged.logs, expected_logs);
    Ok(())
}

proptest! {
    // A failing case is printed, and replayed first on this machine's next run from
    // target/ (ignored by git), instead of a tests/*.proptest-regressions file that asks
    // to be committed: a real bug found here becomes a named test of its own.
    #![proptest_config(ProptestConfig {
        cases: 384,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "target/proptest-regressions/codec_differential.txt"
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn odd_shapes_decode_exactly_as_prost((tag, payload) in arb_payload()) {
        check_against_prost(tag, &payload)?;
    }

    #[test]
    fn mutated_payloads_are_accepted_iff_prost_accepts(
        (tag, payload) in arb_payload(),
        mutations in proptest::collection::vec(arb_mutation(), 1..3),
    ) {
        let mut payload = payload;
        for mutation in &mutations {
            mutate(&mut payload, mutation);
        }
        check_against_prost(tag, &payload)?;
    }

    #[test]
    fn random_bytes_are_accepted_iff_prost_accepts(
        v2 in any::<bool>(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        check_against_prost(if v2 { Tag::V2 } else { Tag::V1 }, &payload)?;
    }
}

/// An unknown field made of `depth` nested groups around a varint field.
fn nested_groups(depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..depth {
        encode_key(9, WireType::StartGroup, &mut out);
    }
    encode_key(9, WireType::Varint, &mut out);
    out.push(1);
    for _ in 0..depth {
        encode_key(9, WireType::EndGroup, &mut out);
    }
    out
}

#[test]
fn group_nesting_meets_the_recursion_limit_where_prost_does() {
    let http = |inner: &[u8]| len_field(3, &[len_field(1, b"GET"), inner.to_vec()].concat());
    let mut prost_outcomes = std::collections::BTreeMap::<String, Vec<bool>>::new();
    for depth in 90..=102 {
        let groups = nested_groups(depth);
        let requests: Vec<(&str, Vec<u8>)> = vec![
            ("request", groups.clone()),
            ("log", len_field(1, &groups)),
            ("http_request", len_field(1, &http(&groups))),
            ("timestamp", len_field(1, &len_field(2, &groups))),
        ];
        let mut payloads = Vec::new();
        for (place, request) in requests {
            payloads.push((format!("V2 {place}"), Tag::V2, len_field(1, &request)));
            payloads.push((format!("V1 {place}"), Tag::V1, request));
        }
        payloads.push((
            "V2 envelope".into(),
            Tag::V2,
            [len_field(2, &[]), groups.clone()].concat(),
        ));
        payloads.push(("V2 status".into(), Tag::V2, len_field(2, &groups)));
        for (place, tag, payload) in payloads {
            check_against_prost(tag, &payload)
                .unwrap_or_else(|e| panic!("{place} depth {depth}: {e}"));
            let accepted = match tag {
                Tag::V1 => ReportBoundaryLogsRequest::decode(&payload[..]).is_ok(),
                Tag::V2 => BoundaryMessage::decode(&payload[..]).is_ok(),
            };
            prost_outcomes.entry(place).or_default().push(accepted);
        }
    }
    for (place, outcomes) in prost_outcomes {
        assert!(
            outcomes.contains(&true) && outcomes.contains(&false),
            "{place}: depths 90..=102 do not straddle prost's limit: {outcomes:?}"
        );
    }
}

// ---- the canonical fast path ---------------------------------------------------------

/// Canonical requests (as boundary writes them) whose logs take the validator's
/// fast path, and the edges of it: negative and large numbers (ten-byte varints),
/// non-ASCII and empty strings, absent fields, a log with nothing set.
fn canonical_requests() -> Vec<ReportBoundaryLogsRequest> {
    let mut requests = vec![workload::request("7d1f5a7e-3c2b-4f7e", "claude-code", 0, 4)];
    let mut odd = workload::request("s", "p", 5, 6);
    odd.logs[0].sequence_number = -1;
    odd.logs[1].sequence_number = i32::MAX;
    if let Some(time) = odd.logs[1].time.as_mut() {
        time.seconds = i64::MIN;
        time.nanos = -1;
    }
    if let Some(Resource::HttpRequest(http)) = odd.logs[2].resource.as_mut() {
        http.url = "https://例え.jp/ürl?q=é".into();
        http.method = String::new();
    }
    odd.logs[3].time = None;
    odd.logs[3].allowed = true;
    odd.logs[4].resource = Some(Resource::HttpRequest(HttpRequest::default()));
    odd.logs[5] = BoundaryLog::default();
    requests.push(odd);
    requests
}

/// Every single-byte change of a canonical payload (to values around the ones that
/// matter: key bytes, varint continuation, UTF-8 lead and continuation bytes) and
/// every truncation is accepted exactly when prost accepts it, with prost's result.
#[test]
fn every_byte_of_a_canonical_request_changed_decodes_as_prost_does() {
    const VALUES: [u8; 12] = [
        0x00, 0x01, 0x08, 0x0A, 0x12, 0x1A, 0x20, 0x7F, 0x80, 0xC3, 0xE4, 0xFF,
    ];
    let mut cases = 0;
    for request in canonical_requests() {
        let v1 = request.encode_to_vec();
        let v2 = BoundaryMessage {
            msg: Some(Msg::Logs(request.clone())),
        }
        .encode_to_vec();
        for (tag, payload) in [(Tag::V1, v1), (Tag::V2, v2)] {
            check_against_prost(tag, &payload).unwrap();
            for at in 0..payload.len() {
                for value in VALUES
                    .into_iter()
                    .chain([payload[at] ^ 0x80, payload[at].wrapping_add(1)])
                {
                    let mut changed = payload.clone();
                    changed[at] = value;
                    check_against_prost(tag, &changed)
                        .unwrap_or_else(|e| panic!("{tag:?} byte {at} = {value:#04x}: {e}"));
                    cases += 1;
                }
                check_against_prost(tag, &payload[..at])
                    .unwrap_or_else(|e| panic!("{tag:?} cut at {at}: {e}"));
            }
        }
    }
    assert!(cases > 10_000, "{cases} cases");
}

/// A log whose string is not UTF-8 is refused, wherever the string sits, whether
/// or not the rest of its `HttpRequest` is ASCII.
#[test]
fn invalid_utf8_in_any_string_of_a_canonical_log_is_refused_as_prost_refuses_it() {
    for field in 0..3 {
        for text in [&b"GET\xC3"[..], b"\xFF", b"caf\xC3\xA9\xC3"] {
            let mut http = Vec::new();
            for f in 0..3u32 {
                let value: &[u8] = if f == field { text } else { b"https://x/" };
                http.extend(len_field(f + 1, value));
            }
            let log = [vec![0x08, 0x01], len_field(3, &http), vec![0x20, 0x07]].concat();
            let payload = [len_field(1, &log), len_field(2, b"s")].concat();
            assert!(ReportBoundaryLogsRequest::decode(&payload[..]).is_err());
            check_against_prost(Tag::V1, &payload).unwrap();
        }
    }
}

/// A `logs` record whose length is padded (a valid, longer varint) is forwarded
/// with its length minimally encoded, as prost would re-encode it.
#[test]
fn a_log_record_with_a_padded_length_is_forwarded_minimally_encoded() {
    let request = workload::request("s", "p", 0, 2);
    let canonical = request.encode_to_vec();
    let mut padded = Vec::new();
    for (i, log) in request.logs.iter().enumerate() {
        let body = log.encode_to_vec();
        if i == 1 {
            // The length as a varint one byte longer than it needs.
            padded.push(0x0A);
            let mut len = Vec::new();
            encode_varint(body.len() as u64, &mut len);
            *len.last_mut().unwrap() |= 0x80;
            len.push(0x00);
            padded.extend(len);
            padded.extend(body);
        } else {
            padded.extend(len_field(1, &body));
        }
    }
    padded.extend(len_field(2, request.session_id.as_bytes()));
    padded.extend(len_field(3, request.confined_process_name.as_bytes()));
    assert_ne!(padded, canonical);
    let Ok(Message::Logs(frame)) = decode_message(RawFrame {
        tag: Tag::V1,
        payload: Bytes::from(padded.clone()),
    }) else {
        panic!("padded request refused")
    };
    assert_eq!(frame.encoded_request().as_ref(), &canonical[..]);
    check_against_prost(Tag::V1, &padded).unwrap();
}
