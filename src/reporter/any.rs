//! The reporter `serve` picks from its flags: coderd over gRPC, or an embedded sink.

use crate::config::{Config, Destination, SinkKind};
use crate::proto::agent::{ReportBoundaryLogsRequest, ReportBoundaryLogsResponse};

use super::grpc::{GrpcReporter, GrpcReporterConfig, ReporterError};
use super::null::NullReporter;
use super::stdout::StdoutReporter;
use super::{EncodedRequest, Reporter};

/// One of the built-in reporters.
#[derive(Debug)]
pub enum AnyReporter {
    Grpc(GrpcReporter),
    Stdout(StdoutReporter),
    Null(NullReporter),
}

impl AnyReporter {
    /// The reporter `config` asks for. Must be called inside a Tokio runtime.
    pub fn from_config(config: &Config) -> Result<Self, ReporterError> {
        Ok(match config.destination() {
            Destination::Coderd {
                endpoint,
                auth_token,
            } => {
                let mut grpc =
                    GrpcReporterConfig::new(endpoint.to_string()).call_timeout(config.call_timeout);
                if let Some(token) = auth_token {
                    grpc = grpc.auth_token(token.expose());
                }
                Self::Grpc(GrpcReporter::new(grpc)?)
            }
            Destination::Sink(SinkKind::Stdout) => Self::Stdout(StdoutReporter::new()),
            Destination::Sink(SinkKind::Null) => Self::Null(NullReporter::new()),
        })
    }
}

impl Reporter for AnyReporter {
    async fn report_boundary_logs(
        &self,
        request: ReportBoundaryLogsRequest,
    ) -> Result<ReportBoundaryLogsResponse, tonic::Status> {
        match self {
            Self::Grpc(r) => r.report_boundary_logs(request).await,
            Self::Stdout(r) => r.report_boundary_logs(request).await,
            Self::Null(r) => r.report_boundary_logs(request).await,
        }
    }

    async fn report_encoded(&self, request: EncodedRequest) -> Result<(), tonic::Status> {
        match self {
            Self::Grpc(r) => r.report_encoded(request).await,
            Self::Stdout(r) => r.report_encoded(request).await,
            Self::Null(r) => r.report_encoded(request).await,
        }
    }
}
