//! Reporters: where the forwarder's requests go (coderd over gRPC, stdout, or nowhere).

pub mod any;
pub mod coder;
pub mod grpc;
pub mod null;
pub mod stdout;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;

use crate::proto::agent::{ReportBoundaryLogsRequest, ReportBoundaryLogsResponse};

/// One merged `ReportBoundaryLogsRequest`, already encoded as protobuf wire bytes,
/// with the counts the forwarder accounts in (a "frame" is one received frame, the
/// unit coder calls a batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRequest {
    /// The request's wire bytes.
    pub bytes: Bytes,
    /// Logs inside.
    pub logs: u32,
    /// Received frames merged into it.
    pub frames: u32,
    /// Where the log records end in `bytes` and the session id and process name fields
    /// begin, when the request was built that way (the forwarder builds every request
    /// so); `None` when unknown. A reporter that reads the session id (the coder
    /// reporter counts non-UUID ones) then reads from here instead of stepping over
    /// every log record.
    pub records_end: Option<u32>,
}

impl EncodedRequest {
    /// Decodes the bytes into the generated message.
    pub fn decode(&self) -> Result<ReportBoundaryLogsRequest, tonic::Status> {
        ReportBoundaryLogsRequest::decode(self.bytes.clone())
            .map_err(|e| tonic::Status::internal(format!("re-decoding a merged request: {e}")))
    }
}

/// What the forwarder calls: the Agent API's `ReportBoundaryLogs`, or a stand-in.
pub trait Reporter: Send + Sync + 'static {
    /// Sends one request, as coder's agent API client does.
    fn report_boundary_logs(
        &self,
        request: ReportBoundaryLogsRequest,
    ) -> impl Future<Output = Result<ReportBoundaryLogsResponse, tonic::Status>> + Send;

    /// Sends a request that is already encoded. Reporters that can put the bytes on
    /// the wire as they are (gRPC, null) override this; the default decodes them.
    fn report_encoded(
        &self,
        request: EncodedRequest,
    ) -> impl Future<Output = Result<(), tonic::Status>> + Send {
        async move {
            let decoded = request.decode()?;
            self.report_boundary_logs(decoded).await.map(drop)
        }
    }

    /// Whether a call may hold up the thread it runs on (blocking I/O, a synchronous
    /// client, unbounded work). The server then runs every call on a thread of its own
    /// so that the shutdown deadline holds whatever a call does. A reporter whose calls
    /// never block the thread (they only await, so the forwarder can drop them at the
    /// deadline: the null, gRPC and coder reporters) says `false` and is called on the
    /// forwarder's own task, without that hand-off. Default `true`.
    fn calls_may_block(&self) -> bool {
        true
    }
}

/// A shared reporter reports as the one it points to, so a caller can hand the
/// forwarder an `Arc` and keep reading the reporter's own state (counts, captures).
impl<R: Reporter> Reporter for Arc<R> {
    fn report_boundary_logs(
        &self,
        request: ReportBoundaryLogsRequest,
    ) -> impl Future<Output = Result<ReportBoundaryLogsResponse, tonic::Status>> + Send {
        R::report_boundary_logs(self, request)
    }

    fn report_encoded(
        &self,
        request: EncodedRequest,
    ) -> impl Future<Output = Result<(), tonic::Status>> + Send {
        R::report_encoded(self, request)
    }

    fn calls_may_block(&self) -> bool {
        R::calls_may_block(self)
    }
}
