//! A measuring instrument for the pipeline bench: a gRPC receiver of
//! `/coder.agent.v2.Agent/ReportBoundaryLogs` that counts the logs of each request
//! without decoding them (it walks the request's top-level fields and skips each
//! `logs` entry by its length). It stands in for a coderd on another machine: on
//! this 2-core box the project's `Sink` decodes every log with prost on the same
//! cores as the proxy and the load generator, and `pipeline/sinkcount` beside
//! `pipeline/sink` shows how much of the sink path that decoding costs.
//!
//! Bench-only on purpose: the product's `sink` decodes (and so checks) everything
//! it receives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use boundary_log_proxy::proto::agent::ReportBoundaryLogsResponse;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{skip_field, DecodeContext, WireType};
use prost::DecodeError;
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

/// The path the proxy calls.
const PATH: &str = "/coder.agent.v2.Agent/ReportBoundaryLogs";

/// Field number of `ReportBoundaryLogsRequest.logs`.
const LOGS_FIELD: u32 = 1;

/// A `ReportBoundaryLogsRequest` reduced to the number of its logs. Only decoded;
/// never encoded.
#[derive(Debug, Default)]
pub struct CountedLogs {
    logs: u64,
}

impl prost::Message for CountedLogs {
    fn encode_raw(&self, _buf: &mut impl BufMut) {}

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == LOGS_FIELD && wire_type == WireType::LengthDelimited {
            self.logs += 1;
        }
        // Checks the entry's length against what is left, as a full decode would.
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        0
    }

    fn clear(&mut self) {
        self.logs = 0;
    }
}

/// The counting receiver; clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct CountingSink {
    logs: Arc<AtomicU64>,
}

impl CountingSink {
    /// Logs received so far.
    pub fn logs(&self) -> u64 {
        self.logs.load(Ordering::Relaxed)
    }
}

impl UnaryService<CountedLogs> for CountingSink {
    type Response = ReportBoundaryLogsResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<CountedLogs>) -> Self::Future {
        self.logs
            .fetch_add(request.into_inner().logs, Ordering::Relaxed);
        Box::pin(async { Ok(Response::new(ReportBoundaryLogsResponse {})) })
    }
}

impl<B> Service<http::Request<B>> for CountingSink
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = self.clone();
        Box::pin(async move {
            if request.uri().path() != PATH {
                return Ok(Status::unimplemented(request.uri().path().to_owned()).into_http());
            }
            let codec =
                tonic_prost::ProstCodec::<ReportBoundaryLogsResponse, CountedLogs>::default();
            let mut grpc = tonic::server::Grpc::new(codec).apply_max_message_size_config(
                Some(boundary_log_proxy::sink::MAX_REQUEST_BYTES),
                None,
            );
            Ok(grpc.unary(method, request).await)
        })
    }
}

impl NamedService for CountingSink {
    const NAME: &'static str = "coder.agent.v2.Agent";
}
