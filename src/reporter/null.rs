//! The null reporter: accepts and discards every request, counting what it saw.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{EncodedRequest, Reporter};
use crate::proto::agent::{ReportBoundaryLogsRequest, ReportBoundaryLogsResponse};

/// Discards requests; `logs()` and `requests()` say how many it was given. Encoded
/// requests are counted from their `EncodedRequest::logs`, never decoded.
#[derive(Debug, Default)]
pub struct NullReporter {
    logs: AtomicU64,
    requests: AtomicU64,
}

impl NullReporter {
    /// A reporter that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Logs discarded so far.
    pub fn logs(&self) -> u64 {
        self.logs.load(Ordering::Relaxed)
    }

    /// Requests discarded so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn count(&self, logs: u64) {
        self.logs.fetch_add(logs, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

impl Reporter for NullReporter {
    async fn report_boundary_logs(
        &self,
        request: ReportBoundaryLogsRequest,
    ) -> Result<ReportBoundaryLogsResponse, tonic::Status> {
        self.count(request.logs.len() as u64);
        Ok(ReportBoundaryLogsResponse {})
    }

    async fn report_encoded(&self, request: EncodedRequest) -> Result<(), tonic::Status> {
        self.count(u64::from(request.logs));
        Ok(())
    }

    /// A call is two atomic additions.
    fn calls_may_block(&self) -> bool {
        false
    }
}
