//! The stdout reporter, and the one JSON line per log that it and the sink print
//! (field names and order as coderd logs boundary requests).

use std::io::{self, BufWriter, Write};
use std::sync::{Mutex, PoisonError};

use prost_types::Timestamp;
use serde::Serialize;

use super::Reporter;
use crate::proto::agent::boundary_log::Resource;
use crate::proto::agent::{BoundaryLog, ReportBoundaryLogsRequest, ReportBoundaryLogsResponse};

/// Bytes buffered between flushes (each request is flushed whole).
const BUFFER_BYTES: usize = 64 << 10;

/// One log as a JSON line, fields in the contract's order.
#[derive(Serialize)]
struct LogLine<'a> {
    msg: &'static str,
    decision: &'static str,
    http_method: &'a str,
    http_url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    matched_rule: Option<&'a str>,
    event_time: String,
    sequence_number: i32,
    session_id: &'a str,
    confined_process_name: &'a str,
}

impl<'a> LogLine<'a> {
    fn new(request: &'a ReportBoundaryLogsRequest, log: &'a BoundaryLog) -> Self {
        let (method, url, rule) = match &log.resource {
            Some(Resource::HttpRequest(http)) => (
                http.method.as_str(),
                http.url.as_str(),
                http.matched_rule.as_str(),
            ),
            None => ("", "", ""),
        };
        Self {
            msg: "boundary_request",
            decision: if log.allowed { "allow" } else { "deny" },
            http_method: method,
            http_url: url,
            matched_rule: log.allowed.then_some(rule),
            event_time: format_event_time(log.time.as_ref()),
            sequence_number: log.sequence_number,
            session_id: &request.session_id,
            confined_process_name: &request.confined_process_name,
        }
    }
}

/// RFC 3339 in UTC with all nine fraction digits, e.g. `2025-11-26T00:00:00.123456789Z`.
/// A missing time reads as the Unix epoch, as Go's `AsTime` gives coderd.
pub fn format_event_time(time: Option<&Timestamp>) -> String {
    let time = time.map(Timestamp::normalized).unwrap_or_default();
    // prost prints the seconds (any year) and a variable-width fraction; print the
    // whole seconds with it and the fraction at fixed width here.
    let whole = Timestamp {
        seconds: time.seconds,
        nanos: 0,
    }
    .to_string();
    let date_time = whole.strip_suffix('Z').unwrap_or(&whole);
    format!("{date_time}.{:09}Z", time.nanos)
}

/// Writes one log's JSON line, newline included.
pub fn write_log_line<W: Write + ?Sized>(
    out: &mut W,
    request: &ReportBoundaryLogsRequest,
    log: &BoundaryLog,
) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &LogLine::new(request, log))?;
    out.write_all(b"\n")
}

/// Writes the JSON lines of every log in the request, in order.
pub fn write_request_lines<W: Write + ?Sized>(
    out: &mut W,
    request: &ReportBoundaryLogsRequest,
) -> io::Result<()> {
    request
        .logs
        .iter()
        .try_for_each(|log| write_log_line(out, request, log))
}

/// One log's JSON line, without the newline.
pub fn log_line(request: &ReportBoundaryLogsRequest, log: &BoundaryLog) -> String {
    serde_json::to_string(&LogLine::new(request, log))
        .expect("a log line serializes: only strings and integers")
}

/// Prints one JSON line per log to a writer (stdout unless told otherwise), buffered
/// and flushed after each request.
pub struct StdoutReporter {
    out: Mutex<BufWriter<Box<dyn Write + Send>>>,
}

impl StdoutReporter {
    /// Prints to the process's stdout.
    pub fn new() -> Self {
        Self::with_writer(Box::new(io::stdout()))
    }

    /// Prints to the given writer instead.
    pub fn with_writer(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Mutex::new(BufWriter::with_capacity(BUFFER_BYTES, out)),
        }
    }

    /// Writes the request's lines and flushes them.
    pub fn write_request(&self, request: &ReportBoundaryLogsRequest) -> io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        write_request_lines(&mut *out, request)?;
        out.flush()
    }
}

impl Default for StdoutReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for StdoutReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdoutReporter").finish_non_exhaustive()
    }
}

impl Reporter for StdoutReporter {
    async fn report_boundary_logs(
        &self,
        request: ReportBoundaryLogsRequest,
    ) -> Result<ReportBoundaryLogsResponse, tonic::Status> {
        self.write_request(&request)
            .map_err(|e| tonic::Status::internal(format!("writing log lines: {e}")))?;
        Ok(ReportBoundaryLogsResponse {})
    }
}
