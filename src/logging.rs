//! The proxy's own logs: a tracing subscriber on stderr, text or JSON, filtered by
//! `--log-level`.

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

/// Installs the global subscriber: stderr, in the given format and filter. ANSI
/// colours only when stderr is a terminal.
pub fn init(settings: &LogSettings) -> Result<(), LoggingError> {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter(settings)?);
    let installed = match settings.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
    installed.map_err(|error| LoggingError::Install(error.to_string()))
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
