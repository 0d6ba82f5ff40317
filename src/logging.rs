//! The proxy's own logs: a tracing subscriber on stderr, text or JSON, filtered by
//! `--log-level`, written by a thread of their own so that a blocked stderr never
//! blocks the proxy.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installing the subscriber failed.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The filter did not parse (only possible for settings built by hand).
    #[error("--log-level '{filter}': {source}")]
    Filter {
        /// The filter as given.
        filter: String,
        /// Why.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber is already installed.
    #[error("installing the log subscriber: {0}")]
    Install(String),
}

/// Builds the filter `settings` describe.
pub fn filter(settings: &LogSettings) -> Result<EnvFilter, LoggingError> {
    let filter = settings.filter.as_str();
    EnvFilter::builder()
        .parse(filter)
        .map_err(|source| LoggingError::Filter {
            filter: filter.to_owned(),
            source,
        })
}

/// Log lines held for stderr while it does not take them (about 1 MB of lines);
/// beyond that, new lines are dropped rather than block the proxy.
const BUFFERED_LINES: usize = 4096;

/// Keeps the log writer thread; dropping it (at exit) writes out what is buffered,
/// waiting at most about a second if stderr does not take it.
#[must_use = "dropping the guard stops logging"]
pub struct LogGuard(#[allow(dead_code)] tracing_appender::non_blocking::WorkerGuard);

/// Installs the global subscriber: stderr, in the given format and filter. ANSI
/// colours only when stderr is a terminal.
///
/// Lines are written by a thread of their own (`tracing-appender`), so a stderr
/// that stops taking them (a pipe nobody reads) never blocks the proxy's threads or
/// its shutdown: up to [`BUFFERED_LINES`] are held, later ones dropped.
pub fn init(settings: &LogSettings) -> Result<LogGuard, LoggingError> {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .lossy(true)
        .thread_name("blp-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(filter(settings)?);
    let installed = match settings.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
    installed.map_err(|error| LoggingError::Install(error.to_string()))?;
    Ok(LogGuard(guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_accepted_log_level_builds_a_filter() {
        for level in ["info", "DEBUG", "off", "warn,boundary_log_proxy=trace"] {
            let settings = LogSettings {
                format: LogFormat::Json,
                filter: level.parse().unwrap(),
            };
            assert!(filter(&settings).is_ok(), "{level}");
        }
    }
}
