//! The stdout reporter's JSON lines: exact shape, field order, timestamps, escaping.

mod support;

use boundary_log_proxy::proto::agent::boundary_log::{HttpRequest, Resource};
use boundary_log_proxy::proto::agent::{BoundaryLog, ReportBoundaryLogsRequest};
use boundary_log_proxy::reporter::stdout::{format_event_time, log_line, StdoutReporter};
use boundary_log_proxy::reporter::{EncodedRequest, Reporter};
use prost::Message as _;
use prost_types::Timestamp;
use support::{log, sample_request, Capture};

fn reporter() -> (StdoutReporter, Capture) {
    let capture = Capture::new();
    (StdoutReporter::with_writer(capture.boxed()), capture)
}

#[tokio::test]
async fn allowed_log_line_has_every_field_in_order_with_matched_rule() {
    let (reporter, out) = reporter();
    let mut request = sample_request();
    request.logs.truncate(1);
    reporter.report_boundary_logs(request).await.unwrap();
    assert_eq!(
        out.text(),
        concat!(
            r#"{"msg":"boundary_request","decision":"allow","http_method":"GET","#,
            r#""http_url":"https://github.com/coder/coder","matched_rule":"domain=github.com","#,
            r#""event_time":"2025-11-26T00:00:00.123456789Z","sequence_number":0,"#,
            r#""session_id":"0b6c4e3a-7f2d-4c1e-9a8b-5d6e7f8a9b0c","confined_process_name":"claude"}"#,
            "\n"
        )
    );
}

#[tokio::test]
async fn denied_log_line_has_no_matched_rule() {
    let (reporter, out) = reporter();
    let mut request = sample_request();
    request.logs.remove(0);
    reporter.report_boundary_logs(request).await.unwrap();
    assert_eq!(
        out.text(),
        concat!(
            r#"{"msg":"boundary_request","decision":"deny","http_method":"POST","#,
            r#""http_url":"https://evil.example/upload?x=1","#,
            r#""event_time":"2025-11-26T00:00:01.123456789Z","sequence_number":1,"#,
            r#""session_id":"0b6c4e3a-7f2d-4c1e-9a8b-5d6e7f8a9b0c","confined_process_name":"claude"}"#,
            "\n"
        )
    );
}

#[tokio::test]
async fn allowed_log_with_empty_rule_still_carries_the_field() {
    let (reporter, out) = reporter();
    let mut request = sample_request();
    request.logs = vec![log(true, 5, "GET", "http://a/")];
    if let Some(Resource::HttpRequest(http)) = &mut request.logs[0].resource {
        http.matched_rule.clear();
    }
    reporter.report_boundary_logs(request).await.unwrap();
    assert!(
        out.text().contains(r#""matched_rule":"","#),
        "{}",
        out.text()
    );
}

#[tokio::test]
async fn one_line_per_log_in_order_and_flushed_after_each_request() {
    let (reporter, out) = reporter();
    reporter
        .report_boundary_logs(sample_request())
        .await
        .unwrap();
    // Read while the reporter (and its buffer) is still alive: flushed per request.
    let lines = out.lines();
    assert_eq!(lines.len(), 2);
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(first["sequence_number"], 0);
    assert_eq!(second["sequence_number"], 1);
    reporter
        .report_boundary_logs(sample_request())
        .await
        .unwrap();
    assert_eq!(out.lines().len(), 4);
}

#[tokio::test]
async fn encoded_requests_print_the_same_lines() {
    let (reporter, out) = reporter();
    let request = sample_request();
    reporter
        .report_encoded(EncodedRequest {
            bytes: request.encode_to_vec().into(),
            logs: 2,
            frames: 1,
            records_end: None,
        })
        .await
        .unwrap();
    let expected: Vec<String> = request.logs.iter().map(|l| log_line(&request, l)).collect();
    assert_eq!(out.lines(), expected);
}

#[test]
fn quotes_backslashes_and_control_characters_are_escaped() {
    let url = "https://x.example/a\"b\\c\nd\u{1}e/\u{e9}";
    let request = ReportBoundaryLogsRequest {
        logs: vec![log(false, 3, "GET", url)],
        session_id: "s\"1".to_owned(),
        confined_process_name: "tab\there".to_owned(),
    };
    let line = log_line(&request, &request.logs[0]);
    assert!(!line.contains('\n'), "{line}");
    assert!(
        line.contains(r#""http_url":"https://x.example/a\"b\\c\nd\u0001e/"#),
        "{line}"
    );
    let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(parsed["http_url"], url);
    assert_eq!(parsed["session_id"], "s\"1");
    assert_eq!(parsed["confined_process_name"], "tab\there");
}

#[test]
fn log_without_a_resource_prints_empty_method_and_url() {
    let request = ReportBoundaryLogsRequest {
        logs: vec![BoundaryLog {
            allowed: false,
            time: None,
            resource: None,
            sequence_number: 9,
        }],
        session_id: "s".to_owned(),
        confined_process_name: "p".to_owned(),
    };
    assert_eq!(
        log_line(&request, &request.logs[0]),
        concat!(
            r#"{"msg":"boundary_request","decision":"deny","http_method":"","http_url":"","#,
            r#""event_time":"1970-01-01T00:00:00.000000000Z","sequence_number":9,"#,
            r#""session_id":"s","confined_process_name":"p"}"#
        )
    );
}

#[test]
fn event_time_always_has_nine_fraction_digits() {
    let at = |seconds, nanos| format_event_time(Some(&Timestamp { seconds, nanos }));
    assert_eq!(
        at(1_764_115_200, 123_456_789),
        "2025-11-26T00:00:00.123456789Z"
    );
    assert_eq!(at(1_764_115_200, 0), "2025-11-26T00:00:00.000000000Z");
    assert_eq!(
        at(1_764_115_200, 5_000_000),
        "2025-11-26T00:00:00.005000000Z"
    );
    assert_eq!(at(1_764_115_200, 1), "2025-11-26T00:00:00.000000001Z");
    assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
    assert_eq!(format_event_time(None), "1970-01-01T00:00:00.000000000Z");
}

#[test]
fn event_time_before_the_epoch_and_unnormalized_nanos() {
    let at = |seconds, nanos| format_event_time(Some(&Timestamp { seconds, nanos }));
    assert_eq!(at(-1, 500_000_000), "1969-12-31T23:59:59.500000000Z");
    // -0.25 s written as 0 s and -250 ms normalizes to the same instant.
    assert_eq!(at(0, -250_000_000), "1969-12-31T23:59:59.750000000Z");
    assert_eq!(at(1, 1_500_000_000), "1970-01-01T00:00:02.500000000Z");
    assert_eq!(at(-62_135_596_800, 0), "0001-01-01T00:00:00.000000000Z");
    assert_eq!(
        at(253_402_300_799, 999_999_999),
        "9999-12-31T23:59:59.999999999Z"
    );
}

#[test]
fn extreme_timestamps_format_without_panicking() {
    for seconds in [i64::MIN, i64::MAX] {
        for nanos in [i32::MIN, 0, i32::MAX] {
            let text = format_event_time(Some(&Timestamp { seconds, nanos }));
            assert!(text.ends_with('Z'), "{text}");
        }
    }
}

#[test]
fn http_request_fields_come_from_the_resource() {
    let request = ReportBoundaryLogsRequest {
        logs: vec![BoundaryLog {
            allowed: true,
            time: Some(Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            resource: Some(Resource::HttpRequest(HttpRequest {
                method: "CONNECT".to_owned(),
                url: "api.anthropic.com:443".to_owned(),
                matched_rule: "domain=*.anthropic.com".to_owned(),
            })),
            sequence_number: i32::MAX,
        }],
        session_id: String::new(),
        confined_process_name: String::new(),
    };
    let parsed: serde_json::Value =
        serde_json::from_str(&log_line(&request, &request.logs[0])).unwrap();
    assert_eq!(parsed["http_method"], "CONNECT");
    assert_eq!(parsed["http_url"], "api.anthropic.com:443");
    assert_eq!(parsed["matched_rule"], "domain=*.anthropic.com");
    assert_eq!(parsed["sequence_number"], i64::from(i32::MAX));
}
