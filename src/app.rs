//! The three commands' entry points, called by `main` with parsed settings; each
//! returns `Err` for a failure to start (main prints it and exits 1).

use crate::config::{Config, ConfigError, LoadgenArgs, SinkArgs};
use crate::metrics::MetricsServerError;

/// A command could not start or failed while running.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A setting is out of range (only for configs built by hand; the CLI checks first).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The async runtime could not be built.
    #[error("starting the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The metrics address could not be bound.
    #[error(transparent)]
    Metrics(#[from] MetricsServerError),
    /// The command exists on the command line but not yet in the engine.
    #[error("{0} is not wired yet")]
    NotWired(&'static str),
}

/// `boundary-log-proxy serve`: runs the proxy until SIGTERM/SIGINT.
pub fn serve(config: Config) -> Result<(), AppError> {
    config.validate()?;
    Err(AppError::NotWired("serve"))
}

/// `boundary-log-proxy sink`: a gRPC Agent server printing what it receives.
pub fn sink(_args: SinkArgs) -> Result<(), AppError> {
    Err(AppError::NotWired("sink"))
}

/// `boundary-log-proxy loadgen`: acts as boundary, then prints frames/s and logs/s.
pub fn loadgen(_args: LoadgenArgs) -> Result<(), AppError> {
    Err(AppError::NotWired("loadgen"))
}
