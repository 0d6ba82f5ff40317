//! The sink's gRPC protocol: `Agent.ReportBoundaryLogs` served by tonic over h2c
//! (TCP or a Unix socket), each request handed to [`Sink::record`].

use std::future::Future;

use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::{remove_socket, Sink, SinkError, SinkListener, MAX_REQUEST_BYTES};
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
        let server = tonic::transport::Server::builder().add_service(self.service());
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
