//! Shared helpers for the integration tests: a fake coderd, a capturable writer, and
//! the pipeline harness (library server, binary, frame client, metrics checks).
//!
//! Each test binary uses a subset of these, so unused items are allowed here.
#![allow(dead_code)]

pub mod as_uid;
pub mod coder_peer;
pub mod coder_sink;
pub mod coderd;
pub mod faults;
pub mod proxy;
pub mod transcript;

use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};

/// A writer whose bytes the test can read while something else owns a clone of it.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// A fresh, empty capture.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything written so far, as UTF-8.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8(bytes.clone()).expect("captured output is UTF-8")
    }

    /// The complete lines written so far.
    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }

    /// A boxed clone, for APIs taking `Box<dyn Write + Send>`.
    pub fn boxed(&self) -> Box<dyn Write + Send> {
        Box::new(self.clone())
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

use boundary_log_proxy::proto::agent::boundary_log::{HttpRequest, Resource};
use boundary_log_proxy::proto::agent::{BoundaryLog, ReportBoundaryLogsRequest};

/// One log with every field set (`matched_rule` only when allowed, as boundary does).
pub fn log(allowed: bool, sequence_number: i32, method: &str, url: &str) -> BoundaryLog {
    BoundaryLog {
        allowed,
        time: Some(prost_types::Timestamp {
            seconds: 1_764_115_200 + i64::from(sequence_number),
            nanos: 123_456_789,
        }),
        resource: Some(Resource::HttpRequest(HttpRequest {
            method: method.to_owned(),
            url: url.to_owned(),
            matched_rule: if allowed {
                format!("domain={}", url.split('/').nth(2).unwrap_or(""))
            } else {
                String::new()
            },
        })),
        sequence_number,
    }
}

/// A request with an allowed and a denied log and both request-level fields set.
pub fn sample_request() -> ReportBoundaryLogsRequest {
    ReportBoundaryLogsRequest {
        logs: vec![
            log(true, 0, "GET", "https://github.com/coder/coder"),
            log(false, 1, "POST", "https://evil.example/upload?x=1"),
        ],
        session_id: "0b6c4e3a-7f2d-4c1e-9a8b-5d6e7f8a9b0c".to_owned(),
        confined_process_name: "claude".to_owned(),
    }
}
