//! The null reporter: discards, counts, and never decodes encoded requests.

mod support;

use std::sync::Arc;

use boundary_log_proxy::reporter::null::NullReporter;
use boundary_log_proxy::reporter::{EncodedRequest, Reporter};
use support::sample_request;

#[tokio::test]
async fn counts_logs_and_requests_from_both_entry_points() {
    let reporter = NullReporter::new();
    assert_eq!((reporter.logs(), reporter.requests()), (0, 0));
    reporter
        .report_boundary_logs(sample_request())
        .await
        .unwrap();
    reporter
        .report_encoded(EncodedRequest {
            bytes: prost::Message::encode_to_vec(&sample_request()).into(),
            logs: 2,
            frames: 1,
            records_end: None,
        })
        .await
        .unwrap();
    assert_eq!((reporter.logs(), reporter.requests()), (4, 2));
}

#[tokio::test]
async fn encoded_requests_are_counted_without_decoding() {
    let reporter = NullReporter::new();
    // Not a protobuf message at all: decoding would fail the call.
    reporter
        .report_encoded(EncodedRequest {
            bytes: vec![0xff; 16].into(),
            logs: 7,
            frames: 3,
            records_end: None,
        })
        .await
        .expect("the null reporter does not decode");
    assert_eq!((reporter.logs(), reporter.requests()), (7, 1));
}

#[tokio::test]
async fn a_shared_reporter_keeps_counting_where_the_caller_can_read_it() {
    let reporter = Arc::new(NullReporter::new());
    let handed_over = Arc::clone(&reporter);
    handed_over
        .report_encoded(EncodedRequest {
            bytes: vec![0xff; 4].into(),
            logs: 5,
            frames: 1,
            records_end: None,
        })
        .await
        .expect("Arc forwards to the inner report_encoded, which does not decode");
    handed_over
        .report_boundary_logs(sample_request())
        .await
        .unwrap();
    assert_eq!((reporter.logs(), reporter.requests()), (7, 2));
}
