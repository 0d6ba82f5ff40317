//! Pipeline test helpers: a library `Server` bound in a temp dir with its forwarder
//! in a task, the `boundary-log-proxy` binary as a child process, a client that
//! writes frames like boundary does, `/metrics` scraping and parsing, and the exact
//! accounting check of docs/metrics.md.
//!
//! ```ignore
//! let proxy = TestProxy::start(IoMode::Auto, |c| c.ring_capacity = 8);
//! let forwarder = proxy.forward(grpc_reporter(&coderd.addr()));
//! proxy.connect().send_request(Tag::V2, &request);
//! forwarder.stop().await;
//! proxy.close().await;
//! assert_accounting(proxy.metrics(), 0);
//! ```

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use boundary_log_proxy::codec::Tag;
use boundary_log_proxy::config::IoMode;
use boundary_log_proxy::metrics::{Accounting, Metrics};
use boundary_log_proxy::proto::agent::{BoundaryLog, ReportBoundaryLogsRequest};
use boundary_log_proxy::reader::Backend;
use boundary_log_proxy::reporter::grpc::{GrpcReporter, GrpcReporterConfig};
use boundary_log_proxy::{workload, Config, Reporter, Server, ServerError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest any test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);
/// How often `eventually` looks again.
const POLL: Duration = Duration::from_millis(5);
/// The binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_boundary-log-proxy");
/// Every metric name starts with this.
pub const PREFIX: &str = "agent_boundary_log_proxy_";

/// Runs `name(IoMode::$mode)` and `name(IoMode::Epoll)` as two tokio tests,
/// `name::$first` and `name::epoll`. Use [`on_io_modes`] or [`on_both_backends`].
#[macro_export]
macro_rules! io_mode_tests {
    ($first:ident = $mode:ident; $($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $first() {
                let mode = boundary_log_proxy::config::IoMode::$mode;
                if mode == boundary_log_proxy::config::IoMode::Uring {
                    if let Some(why) = boundary_log_proxy::reader::uring_unavailable() {
                        $crate::support::as_uid::skip(
                            concat!(stringify!($name), "::", stringify!($first)),
                            &format!("io_uring is not available here: {why}"),
                        );
                        return;
                    }
                }
                super::$name(mode).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn epoll() {
                super::$name(boundary_log_proxy::config::IoMode::Epoll).await
            }
        }
    )*};
}

/// `name::auto` and `name::epoll`: the pipeline as `--io auto` picks it, and epoll.
#[macro_export]
macro_rules! on_io_modes {
    ($($name:ident),* $(,)?) => {
        $crate::io_mode_tests!(auto = Auto; $($name),*);
    };
}

/// `name::uring` and `name::epoll`: each reader forced; `uring` skips, saying why,
/// where io_uring is not allowed.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $crate::io_mode_tests!(uring = Uring; $($name),*);
    };
}

/// The shared test vectors; a missing vector fails the test.
pub fn vector(name: &str) -> Vec<u8> {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors")).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("test vector {}: {e}", path.display()))
}

/// Polls `cond` until it holds; panics naming `what` after [`PATIENCE`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// A request of `logs` workload logs numbered from `first_seq`.
pub fn request(
    session: &str,
    process: &str,
    first_seq: i32,
    logs: usize,
) -> ReportBoundaryLogsRequest {
    workload::request(session, process, first_seq, logs)
}

/// Every log of the requests, in order.
pub fn all_logs<'a>(
    requests: impl IntoIterator<Item = &'a ReportBoundaryLogsRequest>,
) -> Vec<BoundaryLog> {
    requests
        .into_iter()
        .flat_map(|r| r.logs.iter().cloned())
        .collect()
}

/// Logs grouped by (session_id, confined_process_name), each group in arrival order.
pub fn logs_by_session<'a>(
    requests: impl IntoIterator<Item = &'a ReportBoundaryLogsRequest>,
) -> BTreeMap<(String, String), Vec<BoundaryLog>> {
    let mut out: BTreeMap<(String, String), Vec<BoundaryLog>> = BTreeMap::new();
    for r in requests {
        out.entry((r.session_id.clone(), r.confined_process_name.clone()))
            .or_default()
            .extend(r.logs.iter().cloned());
    }
    out
}

/// Checks the accounting invariant exactly:
/// `received + recovered == forwarded + dropped{buffer_full, forward_failed, shutdown,
/// spool_corrupt, spool_full} + in spool + still_buffered` (the spool's terms are 0 without one).
#[track_caller]
pub fn assert_accounting(metrics: &Metrics, still_buffered: u64) {
    assert_accounting_totals(metrics.accounting(), still_buffered);
}

/// [`assert_accounting`] on totals read elsewhere (a scrape, the binary's last log line).
#[track_caller]
pub fn assert_accounting_totals(a: Accounting, still_buffered: u64) {
    assert_eq!(
        a.received + a.recovered,
        a.settled() + a.spooled + still_buffered,
        "accounting invariant broken: {a:?}, still buffered {still_buffered}"
    );
}

/// A gRPC reporter to `url` with a short call timeout.
pub fn grpc_reporter(url: &str) -> GrpcReporter {
    GrpcReporter::new(GrpcReporterConfig::new(url).call_timeout(Duration::from_secs(5)))
        .expect("gRPC reporter")
}

/// Whether the proxy closed `stream` within `timeout` (end of stream or reset).
/// The proxy never writes to boundary: bytes read are a failure too.
pub fn closed_by_proxy(stream: &mut UnixStream, timeout: Duration) -> bool {
    stream
        .set_read_timeout(Some(timeout))
        .expect("set read timeout");
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => true,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        Err(e) => panic!("reading from the proxy: {e}"),
    }
}

/// A connection to the proxy's socket, written to as boundary does.
pub struct Client {
    stream: UnixStream,
}

impl Client {
    /// Connects to `path`.
    pub fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", path.display()));
        Self { stream }
    }

    /// Writes raw bytes (whole frames, parts of frames, vectors).
    pub fn send(&mut self, bytes: &[u8]) -> &mut Self {
        self.stream.write_all(bytes).expect("writing to the proxy");
        self
    }

    /// Writes one frame carrying `request`.
    pub fn send_request(&mut self, tag: Tag, request: &ReportBoundaryLogsRequest) -> &mut Self {
        self.send(&workload::frame(tag, request))
    }

    /// Ends the write side (boundary closing its connection).
    pub fn finish(&mut self) {
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shutting down the write side");
    }

    /// Whether the proxy closed the connection within `timeout` (EOF or reset).
    pub fn closed_by_proxy(&mut self, timeout: Duration) -> bool {
        closed_by_proxy(&mut self.stream, timeout)
    }
}

/// A library `Server` bound in its own temp dir.
pub struct TestProxy {
    pub server: Server,
    pub backend: Backend,
    pub registry: prometheus::Registry,
    dir: tempfile::TempDir,
}

impl TestProxy {
    /// The default config (socket in a temp dir, `io`), adjusted by `tweak`, started.
    pub fn start(io: IoMode, tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            socket: dir.path().join("boundary.sock"),
            io,
            shutdown_timeout: Duration::from_secs(2),
            ..Config::default()
        };
        tweak(&mut config);
        let registry = prometheus::Registry::new();
        let server = Server::new(config, &registry).expect("server");
        let backend = server.start().expect("server starts");
        if io == IoMode::Epoll {
            assert_eq!(backend, Backend::Epoll, "--io epoll runs epoll");
        }
        Self {
            server,
            backend,
            registry,
            dir,
        }
    }

    /// The temp dir the socket lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new client connection.
    pub fn connect(&self) -> Client {
        Client::connect(self.server.socket_path())
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.server.metrics()
    }

    /// The server, and the temporary directory its socket is in (kept while it lives).
    #[allow(dead_code)]
    pub fn into_parts(self) -> (Server, tempfile::TempDir) {
        (self.server, self.dir)
    }

    /// Runs the forwarder with `reporter` in a task.
    pub fn forward<R: Reporter>(&self, reporter: R) -> Forwarder {
        let cancel = CancellationToken::new();
        let task = {
            let (server, cancel) = (self.server.clone(), cancel.clone());
            tokio::spawn(async move { server.run_forwarder(cancel, reporter).await })
        };
        Forwarder { cancel, task }
    }

    /// Waits until the intake counted `n` received logs.
    pub async fn wait_received(&self, n: u64) {
        let metrics = self.metrics().clone();
        eventually(&format!("{n} logs received"), || {
            metrics.logs_received.get() >= n
        })
        .await;
        assert_eq!(
            self.metrics().logs_received.get(),
            n,
            "more logs received than sent"
        );
    }

    /// Waits until the forwarder counted `n` logs forwarded (coderd records a call
    /// before its answer reaches the proxy, so this comes after coderd's count).
    pub async fn wait_forwarded(&self, n: u64) {
        let metrics = self.metrics().clone();
        eventually(&format!("{n} logs forwarded"), || {
            metrics.logs_forwarded.get() >= n
        })
        .await;
        assert_eq!(
            self.metrics().logs_forwarded.get(),
            n,
            "more logs forwarded than sent"
        );
    }

    /// `Server::close` from a blocking thread (it blocks until every thread ended).
    pub async fn close(&self) {
        let server = self.server.clone();
        tokio::time::timeout(
            PATIENCE,
            tokio::task::spawn_blocking(move || server.close()),
        )
        .await
        .expect("close returns in time")
        .expect("close does not panic");
    }
}

/// A forwarder running in a task.
pub struct Forwarder {
    cancel: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Forwarder {
    /// Cancels it and waits for `run_forwarder` to return; panics if it does not
    /// return within [`PATIENCE`] or returns an error.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.join().await;
    }

    /// Waits for `run_forwarder` to return by itself.
    pub async fn join(self) {
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("run_forwarder returns")
            .expect("the forwarder task does not panic")
            .expect("run_forwarder returns Ok");
    }
}

/// A free loopback TCP address (bound and released; the race is negligible in tests).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// `GET path` over HTTP/1.1 to `addr`; returns (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("no header end in {response:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no status in {head:?}")))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err(io::Error::other("chunked responses are not handled"));
    }
    Ok((status, body.to_owned()))
}

/// A parsed Prometheus text exposition: series (`name{labels}`) to value.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    series: BTreeMap<String, f64>,
}

impl Scrape {
    /// Parses the sample lines of `text`.
    pub fn parse(text: &str) -> Self {
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("sample line has a value");
                (
                    series.to_owned(),
                    value.parse().expect("sample value is a number"),
                )
            })
            .collect();
        Self {
            text: text.to_owned(),
            series,
        }
    }

    /// The value of `name` (without the prefix), with `label` (`reason="x"`) if given;
    /// panics if the series is not exported.
    pub fn get(&self, name: &str, label: Option<&str>) -> u64 {
        let key = match label {
            Some(label) => format!("{PREFIX}{name}{{{label}}}"),
            None => format!("{PREFIX}{name}"),
        };
        let value = self
            .series
            .get(&key)
            .unwrap_or_else(|| panic!("series {key} not exported:\n{}", self.text));
        *value as u64
    }

    /// The counters of the accounting invariant.
    pub fn accounting(&self) -> Accounting {
        let dropped =
            |reason: &str| self.get("logs_dropped_total", Some(&format!("reason=\"{reason}\"")));
        Accounting {
            received: self.get("logs_received_total", None),
            forwarded: self.get("logs_forwarded_total", None),
            dropped_buffer_full: dropped("buffer_full"),
            dropped_forward_failed: dropped("forward_failed"),
            dropped_shutdown: dropped("shutdown"),
            recovered: self.get_or_zero("logs_recovered_total", None),
            dropped_spool_corrupt: self
                .get_or_zero("logs_dropped_total", Some("reason=\"spool_corrupt\"")),
            dropped_spool_full: self
                .get_or_zero("logs_dropped_total", Some("reason=\"spool_full\"")),
            spooled: self.get_or_zero("spool_logs", None),
        }
    }

    /// [`Self::get`], or 0 when the series is not exported (the spool's, without one).
    pub fn get_or_zero(&self, name: &str, label: Option<&str>) -> u64 {
        let key = match label {
            Some(label) => format!("{PREFIX}{name}{{{label}}}"),
            None => format!("{PREFIX}{name}"),
        };
        self.series.get(&key).map_or(0, |v| *v as u64)
    }
}

/// Lines a child process wrote on one stream, collected by a thread.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn collect(stream: impl Read + Send + 'static) -> (Self, std::thread::JoinHandle<()>) {
        let lines = Self::default();
        let sink = lines.clone();
        let thread = std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { return };
                sink.0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        (lines, thread)
    }

    /// The lines so far.
    pub fn get(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many lines so far.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// The binary running as a child, its stdout and stderr collected line by line.
/// Killed on drop if still running.
pub struct Process {
    child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// How a child ended.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

impl Process {
    /// Starts the binary with `args`, with no `BOUNDARY_LOG_PROXY_*` or `CODER_AGENT_*`
    /// variables inherited.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with_stdout(args, Stdio::piped())
    }

    /// [`Process::spawn`] with stdout going to `stdout` (collected only when piped).
    pub fn spawn_with_stdout(args: &[&str], stdout: Stdio) -> Self {
        Self::spawn_with_stdio(args, stdout, Stdio::piped())
    }

    /// [`Process::spawn`] with stdout and stderr going where given (each collected
    /// only when piped).
    pub fn spawn_with_stdio(args: &[&str], stdout: Stdio, stderr: Stdio) -> Self {
        let mut command = Command::new(BINARY);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (key, _) in std::env::vars_os() {
            // Nor what a Coder workspace sets, which would pick coderd as the destination.
            if is_proxy_variable(&key.to_string_lossy()) {
                command.env_remove(key);
            }
        }
        let mut child = command.spawn().expect("spawning the binary");
        let mut readers = Vec::new();
        let stderr = match child.stderr.take() {
            Some(err) => {
                let (stderr, err_thread) = Lines::collect(err);
                readers.push(err_thread);
                stderr
            }
            None => Lines::default(),
        };
        let stdout = match child.stdout.take() {
            Some(out) => {
                let (stdout, out_thread) = Lines::collect(out);
                readers.push(out_thread);
                stdout
            }
            None => Lines::default(),
        };
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// Waits until a socket file exists at `path` and the child logged `message`
    /// (`--log-format json`), e.g. `listening`. The file alone is not enough: it
    /// appears at bind(2), and connecting is refused until listen(2).
    pub async fn wait_for_socket(&mut self, path: &Path, message: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
                && self.logged(message)
            {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "the binary exited ({status}) before binding {}; stderr:\n{}",
                    path.display(),
                    self.stderr.get().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether a JSON line on stderr has `fields.message == message`.
    pub fn logged(&self, message: &str) -> bool {
        self.stderr.get().iter().any(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .is_ok_and(|v| v["fields"]["message"] == message)
        })
    }

    /// Waits until `/metrics` on `addr` answers, and returns the scrape.
    pub async fn scrape(&self, addr: SocketAddr) -> Scrape {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
                .await
                .expect("scrape task")
            {
                Ok((200, body)) => return Scrape::parse(&body),
                other => assert!(
                    Instant::now() < deadline,
                    "no /metrics on {addr}: {other:?}; stderr:\n{}",
                    self.stderr.get().join("\n")
                ),
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Scrapes until `cond` holds for the scrape; returns that scrape.
    pub async fn scrape_until(
        &self,
        addr: SocketAddr,
        what: &str,
        cond: impl Fn(&Scrape) -> bool,
    ) -> Scrape {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let scrape = self.scrape(addr).await;
            if cond(&scrape) {
                return scrape;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                scrape.text
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends `signal` (a `libc::SIG*` number).
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({signal}): {}", io::Error::last_os_error());
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the child to exit (panics after [`PATIENCE`]) and returns its output.
    pub async fn wait(self) -> Exited {
        self.wait_within(PATIENCE).await
    }

    /// Waits for the child to exit (panics after `limit`) and returns its output.
    pub async fn wait_within(mut self, limit: Duration) -> Exited {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the binary did not exit within {limit:?}; stderr:\n{}",
                self.stderr.get().join("\n")
            );
            tokio::time::sleep(POLL).await;
        };
        for reader in self.readers.drain(..) {
            let _ = tokio::task::spawn_blocking(move || reader.join()).await;
        }
        Exited {
            status,
            stdout: self.stdout.get(),
            stderr: self.stderr.get(),
        }
    }

    /// SIGTERM, then [`Process::wait`].
    pub async fn terminate(self) -> Exited {
        self.sigterm();
        self.wait().await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The totals of the binary's last `stopped` log line (`--log-format json`).
pub fn stopped_totals(stderr: &[String]) -> Accounting {
    let line = stderr
        .iter()
        .rev()
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["fields"]["message"] == "stopped").then_some(v)
        })
        .unwrap_or_else(|| panic!("no JSON 'stopped' line on stderr:\n{}", stderr.join("\n")));
    let field = |name: &str| {
        line["fields"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("'stopped' line without {name}: {line}"))
    };
    let spool_field = |name: &str| line["fields"][name].as_u64().unwrap_or(0);
    Accounting {
        received: field("received"),
        forwarded: field("forwarded"),
        dropped_buffer_full: field("dropped_buffer_full"),
        dropped_forward_failed: field("dropped_forward_failed"),
        dropped_shutdown: field("dropped_shutdown"),
        recovered: spool_field("recovered"),
        dropped_spool_corrupt: spool_field("dropped_spool_corrupt"),
        dropped_spool_full: spool_field("dropped_spool_full"),
        spooled: spool_field("spool_logs"),
    }
}

/// Variables the binary reads unless told otherwise: its own `BOUNDARY_LOG_PROXY_*`, and
/// the `CODER_AGENT_*` ones coder's agent sets in a workspace (`CODER_AGENT_URL` alone
/// would switch `serve` to the coder transport). Tests start the binary without them.
pub fn is_proxy_variable(name: &str) -> bool {
    name.starts_with("BOUNDARY_LOG_PROXY_") || name.starts_with("CODER_AGENT_")
}
