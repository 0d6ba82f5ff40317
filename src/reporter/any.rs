//! The reporter `serve` picks from its flags: coderd over the coder transport or gRPC, or
//! an embedded sink.

use std::sync::Arc;

use crate::config::{Config, Destination, SinkKind};
use crate::metrics::Metrics;
use crate::proto::agent::{ReportBoundaryLogsRequest, ReportBoundaryLogsResponse};

use super::coder::{CoderConfig, CoderReporter, CoderSetupError};
use super::grpc::{GrpcReporter, GrpcReporterConfig, ReporterError};
use super::null::NullReporter;
use super::stdout::StdoutReporter;
use super::{EncodedRequest, Reporter};

/// Why the reporter the flags ask for could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AnyReporterError {
    /// The gRPC reporter (`--coderd`).
    #[error(transparent)]
    Grpc(#[from] ReporterError),
    /// The coder reporter (`--coder-url`).
    #[error(transparent)]
    Coder(#[from] CoderSetupError),
}

/// One of the built-in reporters.
#[derive(Debug)]
pub enum AnyReporter {
    Coder(CoderReporter),
    Grpc(Box<GrpcReporter>),
    Stdout(StdoutReporter),
    Null(NullReporter),
}

impl AnyReporter {
    /// The reporter `config` asks for, counting in `metrics` (the server's). Must be called
    /// inside a Tokio runtime.
    pub fn from_config(config: &Config, metrics: &Arc<Metrics>) -> Result<Self, AnyReporterError> {
        Ok(match config.destination() {
            Destination::Coder(settings) => Self::Coder(CoderReporter::new(
                CoderConfig::from_settings(settings, config.call_timeout),
                metrics.clone(),
            )?),
            Destination::Coderd {
                endpoint,
                auth_token,
            } => {
                let mut grpc =
                    GrpcReporterConfig::new(endpoint.to_string()).call_timeout(config.call_timeout);
                if let Some(token) = auth_token {
                    grpc = grpc.auth_token(token.expose());
                }
                Self::Grpc(Box::new(GrpcReporter::new(grpc)?))
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
            Self::Coder(r) => r.report_boundary_logs(request).await,
            Self::Grpc(r) => r.report_boundary_logs(request).await,
            Self::Stdout(r) => r.report_boundary_logs(request).await,
            Self::Null(r) => r.report_boundary_logs(request).await,
        }
    }

    async fn report_encoded(&self, request: EncodedRequest) -> Result<(), tonic::Status> {
        match self {
            Self::Coder(r) => r.report_encoded(request).await,
            Self::Grpc(r) => r.report_encoded(request).await,
            Self::Stdout(r) => r.report_encoded(request).await,
            Self::Null(r) => r.report_encoded(request).await,
        }
    }

    fn calls_may_block(&self) -> bool {
        match self {
            Self::Coder(r) => r.calls_may_block(),
            Self::Grpc(r) => r.calls_may_block(),
            Self::Stdout(r) => r.calls_may_block(),
            Self::Null(r) => r.calls_may_block(),
        }
    }
}
