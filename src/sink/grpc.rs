//! The sink's gRPC protocol: `Agent.ReportBoundaryLogs` served by tonic over h2c
//! (TCP or a Unix socket), each request handed to [`Sink::record`]; a quiet sink's
//! service validates and counts each request with the crate's codec instead of decoding
//! it with prost ([`CountingService`]).

use std::future::Future;

use bytes::Buf as _;
use prost::Message as _;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, Context, Poll, Service};
use tonic::server::{NamedService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::{remove_socket, Received, Sink, SinkError, SinkListener, MAX_REQUEST_BYTES};
use crate::proto::agent::agent_server::{Agent, AgentServer};
use crate::proto::agent::{ReportBoundaryLogsRequest, ReportBoundaryLogsResponse};

impl Sink {
    /// The tonic service to mount on a server.
    pub fn service(&self) -> AgentServer<Sink> {
        AgentServer::new(self.clone()).max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    /// Serves gRPC on `listener` until `shutdown` completes, then removes a Unix socket file.
    pub async fn serve(
        &self,
        listener: SinkListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), SinkError> {
        if self.is_quiet() {
            let server = tonic::transport::Server::builder()
                .add_service(CountingService { sink: self.clone() });
            return serve_router(server, listener, shutdown).await;
        }
        let server = tonic::transport::Server::builder().add_service(self.service());
        serve_router(server, listener, shutdown).await
    }
}

/// Serves `server` on `listener` until `shutdown` completes, then removes a Unix socket file.
async fn serve_router(
    server: tonic::transport::server::Router,
    listener: SinkListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SinkError> {
    match listener {
        SinkListener::Tcp(listener) => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            server
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?;
        }
        SinkListener::Unix { listener, path } => {
            let served = server
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
                .await;
            remove_socket(&path);
            served?;
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Agent for Sink {
    async fn report_boundary_logs(
        &self,
        request: Request<ReportBoundaryLogsRequest>,
    ) -> Result<Response<ReportBoundaryLogsResponse>, Status> {
        self.record(&request.into_inner())
            .map_err(|e| Status::internal(format!("sink: writing log lines: {e}")))?;
        Ok(Response::new(ReportBoundaryLogsResponse {}))
    }
}

/// The method's path, as the generated `AgentServer` routes it.
const REPORT_BOUNDARY_LOGS_PATH: &str = "/coder.agent.v2.Agent/ReportBoundaryLogs";

/// A quiet sink's `Agent` service: `ReportBoundaryLogs` whose request is validated and
/// counted by `codec::count_request_logs` (prost's checks, no structs built) and
/// answered with the empty response; any other method is `UNIMPLEMENTED`, as the
/// generated server answers it. A request that does not validate is `INTERNAL`, as
/// tonic's prost codec answers one that does not decode.
#[derive(Debug, Clone)]
pub struct CountingService {
    sink: Sink,
}

impl NamedService for CountingService {
    const NAME: &'static str = "coder.agent.v2.Agent";
}

impl<B> Service<http::Request<B>> for CountingService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != REPORT_BOUNDARY_LOGS_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let count = Count(self.sink.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(CountingCodec)
                .apply_max_message_size_config(Some(MAX_REQUEST_BYTES), None);
            Ok(grpc.unary(count, request).await)
        })
    }
}

/// Counts a request's logs (what [`CountingDecoder`] found) into the sink.
struct Count(Sink);

impl UnaryService<usize> for Count {
    type Response = ReportBoundaryLogsResponse;
    type Future = std::future::Ready<Result<Response<ReportBoundaryLogsResponse>, Status>>;

    fn call(&mut self, request: Request<usize>) -> Self::Future {
        let recorded = self
            .0
            .record_received(&Received::Counted(request.into_inner()))
            .map(|()| Response::new(ReportBoundaryLogsResponse {}))
            .map_err(|e| Status::internal(format!("sink: writing log lines: {e}")));
        std::future::ready(recorded)
    }
}

/// Decodes a request into its number of logs; encodes the empty response with prost.
#[derive(Debug, Clone, Copy, Default)]
struct CountingCodec;

impl Codec for CountingCodec {
    type Encode = ReportBoundaryLogsResponse;
    type Decode = usize;
    type Encoder = ResponseEncoder;
    type Decoder = CountingDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        CountingDecoder
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = ReportBoundaryLogsResponse;
    type Error = Status;

    fn encode(
        &mut self,
        item: ReportBoundaryLogsResponse,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the response: {e}")))
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct CountingDecoder;

impl Decoder for CountingDecoder {
    type Item = usize;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<usize>, Status> {
        let len = src.remaining();
        let counted = if src.chunk().len() == len {
            crate::codec::count_request_logs(src.chunk())
        } else {
            crate::codec::count_request_logs(&src.copy_to_bytes(len))
        };
        src.advance(src.remaining());
        counted
            .map(|logs| Some(logs as usize))
            .map_err(|e| Status::internal(e.to_string()))
    }
}
