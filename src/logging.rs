//! The proxy's own logs: a tracing subscriber on stderr, text or JSON, filtered by
//! `--log-level`, written by a thread of their own so that a blocked stderr never
//! blocks the proxy, with every credential it was given cut out of every line.

use std::io::{self, IsTerminal as _};
use std::sync::Arc;

use tracing_appender::non_blocking::NonBlocking;
use tracing_subscriber::fmt::MakeWriter;

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

/// Credentials shorter than this are not searched for in log lines: they would match
/// ordinary words. Coder's agent tokens are UUIDs (36 bytes), its session tokens 33.
pub const MIN_REDACTED_LEN: usize = 8;

/// What a credential is replaced with in a log line.
pub const REDACTED: &str = "<redacted>";

/// Installs the global subscriber: stderr, in the given format and filter. ANSI
/// colours only when stderr is a terminal.
///
/// `secrets` (the tokens the proxy sends) are replaced by [`REDACTED`] wherever they
/// appear in a line, as written or escaped as a Rust string's `Debug` or JSON
/// escapes them: a dependency logging a request with its headers (tungstenite logs
/// the websocket upgrade, `Coder-Session-Token` included, at `trace`) must not put
/// the token in logs that are usually shipped off the machine.
///
/// Lines are written by a thread of their own (`tracing-appender`), so a stderr
/// that stops taking them (a pipe nobody reads) never blocks the proxy's threads or
/// its shutdown: up to [`BUFFERED_LINES`] are held, later ones dropped.
pub fn init(settings: &LogSettings, secrets: &[&str]) -> Result<LogGuard, LoggingError> {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .lossy(true)
        .thread_name("blp-log")
        .finish(std::io::stderr());
    let writer = Redacting::new(writer, secrets);
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

/// The line a run that fails ends with, on stderr: `error: ...`, or with
/// `--log-format json` a JSON object shaped as the other lines are (`level` ERROR,
/// the message `exiting on an error`, the text in `fields.error`). Written directly,
/// after the log writer is flushed, so that no `--log-level` can silence it; every
/// secret is cut out of it as out of every log line.
pub fn exit_line(format: LogFormat, error: &str, secrets: &[&str]) -> String {
    let line = match format {
        LogFormat::Text => format!("error: {error}"),
        LogFormat::Json => serde_json::json!({
            "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            "level": "ERROR",
            "fields": { "message": "exiting on an error", "error": error },
            "target": "boundary_log_proxy",
        })
        .to_string(),
    };
    let forms: Vec<Vec<u8>> = secrets.iter().flat_map(|s| redacted_forms(s)).collect();
    match redact(line.as_bytes(), &forms) {
        Some(redacted) => String::from_utf8_lossy(&redacted).into_owned(),
        None => line,
    }
}

/// The forms `secret` takes in a log line: as is, escaped by `Debug` (a header
/// printed inside a request's `{:?}`), and each of those escaped again by JSON
/// (`--log-format json`). Empty when it is too short to search for.
fn redacted_forms(secret: &str) -> Vec<Vec<u8>> {
    if secret.len() < MIN_REDACTED_LEN {
        return Vec::new();
    }
    let unquote = |s: String| {
        s.strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .map(str::to_owned)
            .unwrap_or(s)
    };
    // As a `str`'s and a header value's `Debug` print it (the two escape differently),
    // and as `escape_debug` does.
    let mut debug = vec![
        unquote(format!("{secret:?}")),
        secret.escape_debug().to_string(),
    ];
    if let Ok(header) = http::HeaderValue::from_str(secret) {
        debug.push(unquote(format!("{header:?}")));
    }
    let json = |s: &str| unquote(serde_json::to_string(s).unwrap_or_default());
    let mut forms = vec![secret.to_owned(), json(secret)];
    for form in debug {
        forms.push(json(&form));
        forms.push(form);
    }
    forms.sort();
    forms.dedup();
    forms.into_iter().map(String::into_bytes).collect()
}

/// `line` with every occurrence of each of `forms` replaced by [`REDACTED`]; `None`
/// when none occurs.
fn redact(line: &[u8], forms: &[Vec<u8>]) -> Option<Vec<u8>> {
    let find = |from: usize| {
        forms
            .iter()
            .filter_map(|form| {
                line[from..]
                    .windows(form.len())
                    .position(|w| w == form.as_slice())
                    .map(|at| (from + at, form.len()))
            })
            .min()
    };
    let mut at = find(0)?;
    let mut out = Vec::with_capacity(line.len());
    let mut done = 0;
    loop {
        out.extend_from_slice(&line[done..at.0]);
        out.extend_from_slice(REDACTED.as_bytes());
        done = at.0 + at.1;
        match find(done) {
            Some(next) => at = next,
            None => break,
        }
    }
    out.extend_from_slice(&line[done..]);
    Some(out)
}

/// The log writer with credentials cut out. The formatter hands it each line whole,
/// in one `write_all`, and the underlying writer takes every write whole, so a
/// credential is never split across two writes.
#[derive(Clone)]
struct Redacting {
    inner: NonBlocking,
    forms: Arc<[Vec<u8>]>,
}

impl Redacting {
    fn new(inner: NonBlocking, secrets: &[&str]) -> Self {
        let forms: Vec<Vec<u8>> = secrets.iter().flat_map(|s| redacted_forms(s)).collect();
        Self {
            inner,
            forms: forms.into(),
        }
    }
}

impl io::Write for Redacting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match redact(buf, &self.forms) {
            None => self.inner.write(buf),
            Some(clean) => self.inner.write_all(&clean).map(|()| buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<'a> MakeWriter<'a> for Redacting {
    type Writer = Redacting;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_in_a_line_is_replaced_as_written_and_as_escaped() {
        let token = "s3cret\"tok\\en-4f9c";
        let forms = redacted_forms(token);
        let plain = format!("coder-session-token: {token} and again {token}.");
        assert_eq!(
            redact(plain.as_bytes(), &forms).unwrap(),
            b"coder-session-token: <redacted> and again <redacted>."
        );
        // tungstenite's `{:?}` of the request, then the JSON formatter's escapes.
        let debug = format!("{:?}", format!("token: {token}\r\n"));
        let json = serde_json::to_string(&debug).unwrap();
        for line in [debug, json] {
            let clean = String::from_utf8(redact(line.as_bytes(), &forms).unwrap()).unwrap();
            assert!(clean.contains(REDACTED), "{clean}");
            assert!(
                !clean.contains("s3cret") && !clean.contains("4f9c"),
                "{clean}"
            );
        }
    }

    #[test]
    fn a_token_with_quotes_apostrophes_and_backslashes_is_replaced_however_it_was_printed() {
        let token = "s3cret'tok\"en\\4f9c";
        let forms = redacted_forms(token);
        let header = http::HeaderValue::from_str(token).unwrap();
        let printed = [
            format!("Request: {:?}", format!("Coder-Session-Token: {token}\r\n")),
            format!("headers: {{\"coder-session-token\": {header:?}}}"),
        ];
        for line in printed
            .iter()
            .flat_map(|p| [p.clone(), serde_json::to_string(p).unwrap()])
        {
            let clean = String::from_utf8(redact(line.as_bytes(), &forms).unwrap()).unwrap();
            assert!(
                !clean.contains("s3cret") && !clean.contains("4f9c"),
                "{line} -> {clean}"
            );
        }
    }

    #[test]
    fn a_line_without_a_token_and_a_token_too_short_to_search_for_are_left_alone() {
        let forms = redacted_forms("review-secret-agent-token");
        assert_eq!(redact(b"listening socket=/tmp/s.sock", &forms), None);
        assert!(redacted_forms("t0k").is_empty());
        assert_eq!(redact(b"t0k t0k", &redacted_forms("t0k")), None);
    }

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
