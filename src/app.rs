//! The three commands' entry points, called by `main` with parsed settings; each
//! returns `Err` for a failure to start (main prints it and exits 1).

use crate::config::{Config, ConfigError, LoadgenArgs, SinkArgs, SinkKind};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::metrics::{bind_metrics, serve_metrics, Health, MetricsServerError};
use crate::reporter::any::{AnyReporter, AnyReporterError};
use crate::server::{Server, ServerError};
use crate::sink::{run, SinkError, SinkOptions};

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
    /// The reporter could not be built from the flags.
    #[error(transparent)]
    Reporter(#[from] AnyReporterError),
    /// The server could not start (socket path, reader).
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The sink could not start or failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A background task failed.
    #[error("{0}")]
    Task(String),
}

/// `boundary-log-proxy serve`: runs the proxy until SIGTERM/SIGINT/SIGHUP, then shuts down
/// as docs/command-line.md (`--shutdown-timeout`) says and returns `Ok` (exit 0).
pub fn serve(config: Config) -> Result<(), AppError> {
    config.validate()?;
    raise_descriptor_limit();
    let runtime = runtime(if config.spool_dir.is_some() { 2 } else { 1 })?;
    let result = runtime.block_on(serve_async(config));
    // Whatever is still blocked (a write nobody reads) does not hold up the exit.
    runtime.shutdown_timeout(EXIT_GRACE);
    result
}

/// Raises the soft limit of open descriptors to the hard one, as Go's runtime does for
/// every program: each connection, spool segment and `/metrics` scrape takes one, and
/// the usual soft limit (1024 under systemd and most shells) runs out at about 1000
/// connections, below `--max-connections`' own default, while the hard limit
/// (524288 under systemd) is what the administrator allows. Out of descriptors,
/// connections wait unaccepted and `/metrics` cannot answer. A failure changes
/// nothing and is logged.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a live rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        return;
    }
    let soft = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads a live, initialised rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
        tracing::debug!(
            from = soft,
            to = limit.rlim_max,
            "raised the open-descriptor limit"
        );
    } else {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            soft,
            "could not raise the open-descriptor limit to the hard limit"
        );
    }
}

/// Longest the exit waits for runtime threads after the shutdown is done.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

async fn serve_async(config: Config) -> Result<(), AppError> {
    let mut signals = Signals::install()?;
    let registry = prometheus::Registry::new();
    let health = Health::new();
    let shutdown_timeout = config.shutdown_timeout;
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(bind_metrics(addr).await?),
        None => None,
    };
    let server = Server::new(config.clone(), &registry)?;
    let reporter = AnyReporter::from_config(&config, server.metrics())?;
    let backend = server.start()?;
    health.watch_socket(server.metrics().socket_bound.clone());
    tracing::info!(
        socket = %server.socket_path().display(),
        io = %backend,
        destination = %destination(&config),
        metrics = %metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
            .map_or("off".to_owned(), |addr| addr.to_string()),
        "listening"
    );

    let stop_metrics = CancellationToken::new();
    let metrics_task = metrics_listener.map(|listener| {
        let (registry, health, stop) = (registry.clone(), health.clone(), stop_metrics.clone());
        tokio::spawn(serve_metrics(
            listener,
            registry,
            health,
            stop.cancelled_owned(),
        ))
    });

    let cancel = CancellationToken::new();
    let mut forwarder = {
        let (server, cancel) = (server.clone(), cancel.clone());
        tokio::spawn(async move { server.run_forwarder(cancel, reporter).await })
    };

    tokio::select! {
        () = signals.stop_requested() => {},
        ended = &mut forwarder => {
            // The forwarder only ends by itself on a fatal error.
            let error = match ended {
                Ok(Ok(())) => "the forwarder stopped unexpectedly".to_owned(),
                Ok(Err(error)) => error.to_string(),
                Err(error) => error.to_string(),
            };
            tokio::task::spawn_blocking(move || server.close()).await.ok();
            return Err(AppError::Task(error));
        }
    }
    tracing::info!(timeout = ?shutdown_timeout, "shutting down: draining buffered logs");
    health.set_draining();
    let deadline = Instant::now() + shutdown_timeout;
    {
        let server = server.clone();
        // Stops accepting, reads what is waiting on open connections, closes the ring.
        tokio::task::spawn_blocking(move || server.stop_intake(deadline))
            .await
            .map_err(|e| AppError::Task(format!("stopping the reader: {e}")))?;
    }
    // The forwarder returns once the closed ring is empty and all is delivered. A second
    // stop signal ends the wait at once, as the deadline would, and brings the
    // deadline forward to now: closing then does not wait either for a reporter call
    // that blocks its thread (a write to a stdout nobody reads).
    let (drained, deadline) = tokio::select! {
        ended = tokio::time::timeout_at(deadline.into(), &mut forwarder) => (ended.is_ok(), deadline),
        () = signals.hurry_requested() => {
            tracing::warn!(
                "second stop signal: not waiting out the drain; what is still held is counted as at the deadline"
            );
            (false, Instant::now())
        }
    };
    if !drained {
        cancel.cancel();
        let _ = forwarder.await;
    }
    let metrics = server.metrics().clone();
    tokio::task::spawn_blocking(move || server.close_by(deadline))
        .await
        .map_err(|e| AppError::Task(format!("closing: {e}")))?;
    stop_metrics.cancel();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    let totals = metrics.accounting();
    tracing::info!(
        received = totals.received,
        forwarded = totals.forwarded,
        dropped_buffer_full = totals.dropped_buffer_full,
        dropped_forward_failed = totals.dropped_forward_failed,
        dropped_shutdown = totals.dropped_shutdown,
        recovered = totals.recovered,
        dropped_spool_corrupt = totals.dropped_spool_corrupt,
        dropped_spool_full = totals.dropped_spool_full,
        spool_logs = totals.spooled,
        "stopped"
    );
    Ok(())
}

/// Where the logs go, for the start-up line: coderd's URL (coder transport), the gRPC
/// destination, or the embedded sink.
fn destination(config: &Config) -> String {
    match (&config.coder, &config.coderd, config.sink) {
        (Some(coder), _, _) => format!("coderd {} (coder transport)", coder.url),
        (None, Some(coderd), _) => format!("gRPC {coderd}"),
        (None, None, Some(sink)) => match sink {
            SinkKind::Stdout => "--sink stdout".to_owned(),
            SinkKind::Null => "--sink null".to_owned(),
        },
        (None, None, None) => "none".to_owned(),
    }
}

/// The signals the proxy handles, listened to from the start (before the socket is
/// bound), so that none of them kills the process with its default action. SIGTERM,
/// SIGINT and SIGHUP (a terminal, ssh session or tmux pane closing) stop it
/// gracefully. SIGUSR1 and SIGUSR2 mean nothing here and are logged and ignored
/// (their default action would kill the process, buffered logs lost uncounted).
/// SIGPIPE is ignored by the Rust runtime before `main` (a write to a closed pipe
/// fails with EPIPE instead). SIGQUIT keeps its default on purpose: the operator's
/// way to stop at once, with a core dump, no drain. README "Signals" says the same.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (inside the runtime).
    fn install() -> Result<Self, AppError> {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |kind| signal(kind).map_err(AppError::Runtime);
        Ok(Self {
            term: listen(SignalKind::terminate())?,
            int: listen(SignalKind::interrupt())?,
            hup: listen(SignalKind::hangup())?,
            usr1: listen(SignalKind::user_defined1())?,
            usr2: listen(SignalKind::user_defined2())?,
        })
    }

    /// The next signal handled (one that arrived since `install` counts), by name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
            _ = self.usr1.recv() => "SIGUSR1",
            _ = self.usr2.recv() => "SIGUSR2",
        }
    }

    /// Returns at the first signal that stops the process (SIGTERM, SIGINT or SIGHUP);
    /// logs and ignores the others.
    async fn stop_requested(&mut self) {
        loop {
            let name = self.next().await;
            if matches!(name, "SIGTERM" | "SIGINT" | "SIGHUP") {
                tracing::info!(signal = name, "stop requested");
                return;
            }
            tracing::info!(
                signal = name,
                "signal has no meaning for the proxy; ignored"
            );
        }
    }

    /// During the drain: returns at a SIGTERM or SIGINT, the operator asking again. A
    /// SIGHUP then is logged and ignored: a closing terminal sends it twice (the shell's,
    /// then the kernel's as the shell exits), and that is one request to stop.
    async fn hurry_requested(&mut self) {
        loop {
            let name = self.next().await;
            if matches!(name, "SIGTERM" | "SIGINT") {
                tracing::info!(signal = name, "stop requested again");
                return;
            }
            tracing::info!(signal = name, "signal during the drain; ignored");
        }
    }
}

/// The proxy's async runtime: the delivery loop, the reporter's connection, the metrics
/// endpoint and the signals. One worker without a spool: reading, validating and batching
/// run on threads of their own, and with a second worker each hand-off between the
/// delivery loop and the connection's task woke the other thread (2.6 against 0.9 context
/// switches per 1000 logs through the coder transport, 4.7 against 1.1 through gRPC, in
/// e2e_bench). Two with a spool: the delivery loop writes and syncs the spool's files
/// itself, and a slow disk must not hold up `/metrics`, `/healthz`, the signals or the
/// coder session's keep-alive answers meanwhile.
fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, AppError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("blp-runtime")
        .enable_all()
        .build()
        .map_err(AppError::Runtime)
}

/// `boundary-log-proxy sink`: a gRPC or coder-protocol server printing what it receives,
/// until SIGTERM/SIGINT/SIGHUP.
///
/// With `--quiet` it runs on one thread: a test stand-in for coderd shares the machine
/// with the proxy it measures, and one thread moves a request through its websocket,
/// yamux and DRPC tasks without waking another thread at each hand-off. Printing, it
/// keeps two workers: a stdout pipe that stops being read blocks the thread writing to
/// it, and the other keeps the sink's connections (and their keep-alives) going.
pub fn sink(args: SinkArgs) -> Result<(), AppError> {
    let runtime = if args.quiet {
        tokio::runtime::Builder::new_current_thread()
            .thread_name("blp-sink")
            .enable_all()
            .build()
            .map_err(AppError::Runtime)?
    } else {
        runtime(2)?
    };
    runtime.block_on(async move {
        let mut signals = Signals::install()?;
        let options = SinkOptions {
            listen: args.listen.to_string(),
            quiet: args.quiet,
            protocol: args.protocol,
            token: args.token.map(|t| t.expose().to_owned()),
            coder_version: args.coder_version,
        };
        run(options, async move {
            signals.stop_requested().await;
        })
        .await?;
        Ok(())
    })
}

/// `boundary-log-proxy loadgen`: acts as boundary (progress on stderr every second),
/// then prints the summary line (frames/s, logs/s, bytes/s) on stdout.
pub fn loadgen(args: LoadgenArgs) -> Result<(), AppError> {
    let summary = crate::loadgen::run(&args).map_err(|error| match error {
        // Found before any connection is made: a bad value, reported as one (exit 2).
        crate::loadgen::LoadgenError::FrameTooLarge { bytes, .. } => {
            AppError::Config(ConfigError::Unusable {
                setting: "--logs-per-frame",
                value: args.logs_per_frame.to_string(),
                takes: "as many logs as fit one frame",
                problem: format!(
                    "frames of that many logs can reach {bytes} bytes (its longest log each \
                     time, with the widest numbers), over the {}-byte frame limit",
                    crate::codec::MAX_PAYLOAD_LEN
                ),
            })
        }
        error => AppError::Task(error.to_string()),
    })?;
    print_line(summary)
}

/// Writes `text` and a newline on stdout. A reader that has gone away (`| head -1`)
/// is not a failure: the output was not wanted any more.
pub fn print_line(text: impl std::fmt::Display) -> Result<(), AppError> {
    use std::io::Write as _;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(AppError::Task(format!("writing to stdout: {error}")))
        }
        _ => Ok(()),
    }
}
