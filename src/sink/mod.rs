//! The `sink` subcommand, standing in for coderd: what every protocol shares (the
//! [`Sink`] that prints or counts what arrives, the listen address, the count line)
//! and the choice of protocol. `grpc` serves `Agent.ReportBoundaryLogs` over h2c; `coder`
//! serves coderd's own transport (websocket + yamux + DRPC).

pub mod coder;
mod grpc;

use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};

use self::coder::{CoderSink, CoderSinkConfig};
use crate::config::SinkProtocol;
use crate::proto::agent::ReportBoundaryLogsRequest;
use crate::reporter::stdout::StdoutReporter;
use prost::Message as _;

/// Largest request the sink accepts: generous, so a proxy configured for large
/// batches is not refused by its test double.
pub const MAX_REQUEST_BYTES: usize = 64 << 20;
/// How often `--quiet` prints its count line.
pub const COUNT_INTERVAL: Duration = Duration::from_secs(1);

/// Errors of the sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The listen address could not be bound.
    #[error("sink: cannot listen on {addr}: {source}")]
    Bind {
        /// The address as given.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The Unix socket could not be bound: something other than a leftover socket is
    /// at the path (a file, or a socket another process serves), or the bind failed.
    #[error("sink: {0}")]
    Socket(#[from] crate::reader::ReaderError),
    /// The server failed while running.
    #[error("sink: serving failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// A setting that only the coder protocol has was given with another protocol.
    #[error("sink: {0} is only for --protocol coder")]
    CoderOnly(&'static str),
    /// The coder protocol listens on TCP only.
    #[error("sink: --protocol coder listens on HOST:PORT, not on {0}")]
    CoderNeedsTcp(String),
}

/// The service: counts every request and log, and prints their JSON lines unless quiet.
/// Clones share the counters.
#[derive(Debug, Clone)]
pub struct Sink {
    inner: Arc<SinkInner>,
}

#[derive(Debug)]
struct SinkInner {
    logs: AtomicU64,
    requests: AtomicU64,
    printer: Option<StdoutReporter>,
}

impl Sink {
    /// Prints each received log through `printer`.
    pub fn printing(printer: StdoutReporter) -> Self {
        Self::with_printer(Some(printer))
    }

    /// Only counts.
    pub fn quiet() -> Self {
        Self::with_printer(None)
    }

    fn with_printer(printer: Option<StdoutReporter>) -> Self {
        Self {
            inner: Arc::new(SinkInner {
                logs: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                printer,
            }),
        }
    }

    /// Logs received so far.
    pub fn logs(&self) -> u64 {
        self.inner.logs.load(Ordering::Relaxed)
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Prints `request`'s logs (unless quiet) and counts it with its logs.
    pub fn record(&self, request: &ReportBoundaryLogsRequest) -> io::Result<()> {
        if let Some(printer) = &self.inner.printer {
            printer.write_request(request)?;
        }
        self.count(request.logs.len());
        Ok(())
    }

    /// True when the sink only counts (nothing to print, so a request need not be decoded).
    pub fn is_quiet(&self) -> bool {
        self.inner.printer.is_none()
    }

    /// Decodes an encoded `ReportBoundaryLogsRequest` as far as this sink needs: fully with
    /// prost when it prints, or, when quiet, only validated and counted by the crate's
    /// codec (`codec::count_request_logs`: the same checks as prost, no structs built).
    /// The error is the text a decoding failure is reported with.
    pub fn decode(&self, bytes: &[u8]) -> Result<Received, String> {
        if self.is_quiet() {
            crate::codec::count_request_logs(bytes)
                .map(|logs| Received::Counted(logs as usize))
                .map_err(|e| e.to_string())
        } else {
            ReportBoundaryLogsRequest::decode(bytes)
                .map(Received::Decoded)
                .map_err(|e| e.to_string())
        }
    }

    /// Records what [`Sink::decode`] gave: prints and counts a decoded request, counts a
    /// counted one.
    pub fn record_received(&self, received: &Received) -> io::Result<()> {
        match received {
            Received::Decoded(request) => self.record(request),
            Received::Counted(logs) => {
                self.count(*logs);
                Ok(())
            }
        }
    }

    fn count(&self, logs: usize) {
        self.inner.logs.fetch_add(logs as u64, Ordering::Relaxed);
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// A request as the sink received it.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// Decoded with prost, to be printed.
    Decoded(ReportBoundaryLogsRequest),
    /// Validated and counted only (a quiet sink): its number of logs.
    Counted(usize),
}

impl Received {
    /// The request's number of logs.
    pub fn logs(&self) -> usize {
        match self {
            Self::Decoded(request) => request.logs.len(),
            Self::Counted(logs) => *logs,
        }
    }
}

/// A bound listen address: TCP, or a Unix socket and its path.
#[derive(Debug)]
pub enum SinkListener {
    /// `HOST:PORT`.
    Tcp(TcpListener),
    /// `unix:/PATH`.
    Unix {
        /// The listener.
        listener: UnixListener,
        /// The socket file, removed when serving ends.
        path: PathBuf,
    },
}

impl SinkListener {
    /// Binds `HOST:PORT` or `unix:/PATH` (a leftover socket file there is replaced;
    /// anything else at the path is an error).
    pub async fn bind(listen: &str) -> Result<Self, SinkError> {
        let bind_error = |source| SinkError::Bind {
            addr: listen.to_owned(),
            source,
        };
        match listen.strip_prefix("unix:") {
            Some(path) => {
                let path = PathBuf::from(path);
                // The proxy's own bind: a leftover socket is replaced, one another
                // process still serves is not, nor is anything that is not a socket.
                let listener = crate::reader::bind(&path, crate::reader::DEFAULT_SOCKET_MODE)
                    .map_err(SinkError::Socket)
                    .and_then(|std| {
                        std.set_nonblocking(true).map_err(bind_error)?;
                        UnixListener::from_std(std).map_err(bind_error)
                    })?;
                Ok(Self::Unix { listener, path })
            }
            None => Ok(Self::Tcp(
                TcpListener::bind(listen).await.map_err(bind_error)?,
            )),
        }
    }

    /// Where clients connect, as the proxy's `--coderd` takes it:
    /// `http://HOST:PORT` or `unix:/PATH`.
    pub fn url(&self) -> String {
        match self {
            Self::Tcp(listener) => match listener.local_addr() {
                Ok(addr) => format!("http://{addr}"),
                Err(_) => "http://<unknown>".to_owned(),
            },
            Self::Unix { path, .. } => format!("unix:{}", path.display()),
        }
    }
}

/// Removes our socket file on the way out, if it is still a socket.
pub(crate) fn remove_socket(path: &Path) {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "sink: could not remove the socket file");
            }
        }
    }
}

/// The quiet sink's line.
pub fn count_line(logs: u64, requests: u64) -> String {
    format!("received {logs} logs in {requests} requests")
}

/// Every `every`, writes the sink's `count_line` to `out` if the counts changed.
/// Runs until dropped or until writing fails.
pub async fn print_counts(sink: Sink, every: Duration, mut out: Box<dyn Write + Send>) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (0, 0);
    loop {
        ticker.tick().await;
        let now = (sink.logs(), sink.requests());
        if now == last {
            continue;
        }
        last = now;
        let written = writeln!(out, "{}", count_line(now.0, now.1)).and_then(|()| out.flush());
        if let Err(e) = written {
            tracing::warn!(error = %e, "sink: cannot write the count line; stopping it");
            return;
        }
    }
}

/// What the `sink` subcommand runs with.
#[derive(Debug, Clone, Default)]
pub struct SinkOptions {
    /// `HOST:PORT`, or `unix:/PATH` (gRPC only).
    pub listen: String,
    /// Print a count line every second instead of every log.
    pub quiet: bool,
    /// The protocol served.
    pub protocol: SinkProtocol,
    /// Coder protocol: the only session token accepted (default any).
    pub token: Option<String>,
    /// Coder protocol: the version `/api/v2/buildinfo` reports.
    pub coder_version: Option<String>,
}

/// The `sink` subcommand: binds `listen` (`HOST:PORT` or `unix:/PATH`), prints each
/// received log's JSON line on stdout (or, if `quiet`, a count line every second when
/// it changes, and the final count at the end) until `shutdown` completes. Serves gRPC;
/// [`run`] serves either protocol.
pub async fn run_sink(
    listen: &str,
    quiet: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SinkError> {
    let options = SinkOptions {
        listen: listen.to_owned(),
        quiet,
        ..SinkOptions::default()
    };
    run(options, shutdown).await
}

/// The `sink` subcommand with its protocol: as [`run_sink`] describes, serving
/// `options.protocol`.
pub async fn run(
    options: SinkOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SinkError> {
    let SinkOptions {
        listen,
        quiet,
        protocol,
        token,
        coder_version,
    } = options;
    if protocol == SinkProtocol::Grpc {
        if token.is_some() {
            return Err(SinkError::CoderOnly("--token"));
        }
        if coder_version.is_some() {
            return Err(SinkError::CoderOnly("--coder-version"));
        }
    }
    if protocol == SinkProtocol::Coder && listen.starts_with("unix:") {
        return Err(SinkError::CoderNeedsTcp(listen));
    }
    let listener = SinkListener::bind(&listen).await?;
    tracing::info!(url = %listener.url(), quiet, %protocol, "sink listening");
    let sink = if quiet {
        Sink::quiet()
    } else {
        Sink::printing(StdoutReporter::new())
    };
    let counts = quiet.then(|| {
        tokio::spawn(print_counts(
            sink.clone(),
            COUNT_INTERVAL,
            Box::new(io::stdout()),
        ))
    });
    let served = match (protocol, listener) {
        (SinkProtocol::Grpc, listener) => sink.serve(listener, shutdown).await,
        (SinkProtocol::Coder, SinkListener::Tcp(listener)) => {
            let mut config = CoderSinkConfig {
                token,
                ..CoderSinkConfig::default()
            };
            if let Some(version) = coder_version {
                config.version = version;
            }
            CoderSink::new(sink.clone(), config)
                .serve(listener, shutdown)
                .await;
            Ok(())
        }
        (SinkProtocol::Coder, listener) => Err(SinkError::CoderNeedsTcp(listener.url())),
    };
    if let Some(counts) = counts {
        counts.abort();
        println!("{}", count_line(sink.logs(), sink.requests()));
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_sink_counts_what_a_printing_sink_decodes_and_refuses_the_same_bytes() {
        let request = ReportBoundaryLogsRequest {
            logs: vec![Default::default(); 3],
            session_id: "s".into(),
            confined_process_name: "p".into(),
        };
        let bytes = request.encode_to_vec();
        let quiet = Sink::quiet();
        let printing = Sink::printing(StdoutReporter::new());
        assert_eq!(quiet.decode(&bytes), Ok(Received::Counted(3)));
        assert_eq!(printing.decode(&bytes), Ok(Received::Decoded(request)));
        quiet.record_received(&Received::Counted(3)).unwrap();
        assert_eq!((quiet.logs(), quiet.requests()), (3, 1));
        let bad_utf8 = [0x12, 0x02, 0xff, 0xfe];
        assert!(quiet.decode(&bad_utf8).is_err());
        assert!(printing.decode(&bad_utf8).is_err());
    }

    #[tokio::test]
    async fn coder_only_settings_and_a_unix_socket_for_coder_are_refused_before_binding() {
        let grpc_with = |token: Option<&str>, version: Option<&str>| SinkOptions {
            listen: "127.0.0.1:0".into(),
            token: token.map(Into::into),
            coder_version: version.map(Into::into),
            ..SinkOptions::default()
        };
        let never = std::future::pending::<()>();
        let refused = run(grpc_with(Some("t"), None), never).await;
        assert!(
            matches!(refused, Err(SinkError::CoderOnly("--token"))),
            "{refused:?}"
        );
        let refused = run(grpc_with(None, Some("v2.30.0")), std::future::pending()).await;
        assert!(
            matches!(refused, Err(SinkError::CoderOnly("--coder-version"))),
            "{refused:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let coder_on_unix = SinkOptions {
            listen: format!("unix:{}", path.display()),
            protocol: SinkProtocol::Coder,
            ..SinkOptions::default()
        };
        let refused = run(coder_on_unix, std::future::pending()).await;
        assert!(
            matches!(refused, Err(SinkError::CoderNeedsTcp(_))),
            "{refused:?}"
        );
        assert!(!path.exists(), "nothing was bound");
    }
}
