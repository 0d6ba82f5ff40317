//! Shutdown under full load. In process: every frame a client managed to write
//! before the reader stopped is received (nothing written successfully is thrown
//! away). Through the real binary: SIGTERM with coderd up delivers everything
//! buffered and exits 0; with coderd down the leftovers are counted as `shutdown`
//! and the exit comes within the shutdown timeout. Each test checks the accounting
//! invariant exactly.

mod support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boundary_log_proxy::config::IoMode;
use boundary_log_proxy::metrics::{Accounting, FrameRejectReason};
use support::coder_peer::{Answer, CoderPeer, PeerConfig};
use support::coderd::{Behaviour, FakeCoderd};
use support::faults::{delivered, frames, Proxy, PATIENCE};
use support::proxy::{
    assert_accounting_totals, free_addr, http_get, stopped_totals, Process, Scrape,
};

const WRITERS: usize = 6;
const LOGS_PER_FRAME: usize = 2;

/// `WRITERS` clients, each writing frames of its own session until a write fails
/// or the load is finished.
struct Load {
    writers: Vec<std::thread::JoinHandle<usize>>,
    stop: Arc<AtomicBool>,
    /// Writers that have written their first frame.
    writing: Arc<AtomicUsize>,
}

impl Load {
    fn start(socket: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let writing = Arc::new(AtomicUsize::new(0));
        let writers = (0..WRITERS)
            .map(|w| {
                let client = UnixStream::connect(socket).expect("connect");
                let (stop, writing) = (stop.clone(), writing.clone());
                std::thread::spawn(move || {
                    write_until_refused(client, &format!("load-{w}"), &stop, &writing)
                })
            })
            .collect();
        Self {
            writers,
            stop,
            writing,
        }
    }

    /// Until `received()` reaches `logs` and every writer has written: a writer
    /// still preparing its frames when the stop comes would write nothing.
    async fn wait_for(&self, logs: u64, received: impl Fn() -> u64) {
        let until = Instant::now() + PATIENCE;
        while received() < logs || self.writing.load(Ordering::Relaxed) < WRITERS {
            assert!(Instant::now() < until, "load did not reach the proxy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the writers; the frames they wrote whole.
    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.writers.into_iter().map(|w| w.join().unwrap()).sum()
    }
}

/// Writes frames of session `session` on `client` until a write fails or `stop` is
/// set; returns the frames written whole.
fn write_until_refused(
    mut client: UnixStream,
    session: &str,
    stop: &AtomicBool,
    writing: &AtomicUsize,
) -> usize {
    // The sequence numbers repeat every 2000 frames; nothing here looks at them.
    let batch = frames(session, 0, 2000, LOGS_PER_FRAME);
    let mut written = 0;
    'outer: loop {
        for frame in &batch {
            if stop.load(Ordering::Relaxed) {
                break 'outer;
            }
            if client.write_all(frame).is_err() {
                break 'outer;
            }
            if written == 0 {
                writing.fetch_add(1, Ordering::Relaxed);
            }
            written += 1;
        }
    }
    written
}

on_both_backends!(stopping_under_load_receives_every_frame_a_client_wrote);

async fn stopping_under_load_receives_every_frame_a_client_wrote(io: IoMode) {
    let coderd = FakeCoderd::start().await;
    let (dir, config) = Proxy::config(io);
    let proxy = Proxy::start_grpc(dir, config, &coderd.addr()).await;
    let load = Load::start(&proxy.socket_path());
    load.wait_for(20_000, || proxy.accounting().received).await;

    let server = proxy.server.clone();
    tokio::task::spawn_blocking(move || server.stop_intake(Instant::now() + PATIENCE))
        .await
        .unwrap();
    let written = load.finish();

    let at_stop = proxy.accounting();
    let truncated = proxy
        .metrics()
        .frames_rejected_for(FrameRejectReason::Truncated);
    assert!(truncated <= WRITERS as u64);
    assert_eq!(
        at_stop.received,
        (written * LOGS_PER_FRAME) as u64,
        "every frame written whole was received ({truncated} cut off at the close)"
    );
    assert!(
        proxy.wait_settled(PATIENCE).await,
        "{:?}",
        proxy.accounting()
    );
    let totals = proxy.close().await;
    assert_eq!(
        totals.dropped_shutdown, 0,
        "the forwarder delivered what was buffered"
    );
    assert_eq!(totals.dropped_forward_failed, 0);
    assert_eq!(coderd.logs_received() as u64, totals.forwarded);
    assert_accounting_totals(totals, 0);
}

/// The binary, serving with the given extra flags and JSON logs on stderr.
struct Binary {
    process: Process,
    socket: PathBuf,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Binary {
    async fn serve(coderd: &str, extra: &[&str]) -> Self {
        Self::start(&["--coderd", coderd], extra, Stdio::piped()).await
    }

    /// Serves to `destination` (`--coderd URL` or `--sink KIND`) with `extra`
    /// flags, the process's stdout going to `stdout`.
    async fn start(destination: &[&str], extra: &[&str], stdout: Stdio) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy.sock");
        let metrics = free_addr();
        let (socket_arg, metrics_arg) = (socket.to_str().unwrap(), metrics.to_string());
        let mut args = vec!["serve", "--socket", socket_arg];
        args.extend_from_slice(destination);
        args.extend_from_slice(&[
            "--metrics-addr",
            &metrics_arg,
            "--log-format",
            "json",
            "--log-level",
            "info",
        ]);
        args.extend_from_slice(extra);
        let mut process = Process::spawn_with_stdout(&args, stdout);
        process.wait_for_socket(&socket, "listening").await;
        process.scrape(metrics).await;
        Self {
            process,
            socket,
            metrics,
            _dir: dir,
        }
    }

    /// `logs_received_total` now (0 while `/metrics` does not answer).
    fn received(&self) -> u64 {
        match http_get(self.metrics, "/metrics") {
            Ok((200, body)) => Scrape::parse(&body).get("logs_received_total", None),
            _ => 0,
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit: the status code, the time
    /// it took, the counts of the final "stopped" line and every stderr line.
    async fn terminate_within(
        self,
        limit: Duration,
    ) -> (Option<i32>, Duration, Accounting, Vec<String>) {
        let stopped = self.stop_with(libc::SIGTERM, limit).await;
        (stopped.code, stopped.took, stopped.totals, stopped.stderr)
    }

    /// Sends `signal`, then waits up to `limit` for the exit.
    async fn stop_with(self, signal: libc::c_int, limit: Duration) -> Stopped {
        let started = Instant::now();
        self.process.signal(signal);
        let exited = self.process.wait_within(limit).await;
        let took = started.elapsed();
        let totals = stopped_totals(&exited.stderr);
        Stopped {
            code: exited.status.code(),
            took,
            totals,
            stderr: exited.stderr,
            socket_left: std::fs::symlink_metadata(&self.socket).is_ok(),
        }
    }

    /// Waits until the proxy received `logs` logs.
    async fn wait_received(&self, logs: u64) {
        let until = Instant::now() + PATIENCE;
        while self.received() < logs {
            assert!(
                Instant::now() < until,
                "{logs} logs did not reach the proxy"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How the binary ended after a signal.
struct Stopped {
    code: Option<i32>,
    took: Duration,
    /// The counts of the final "stopped" line.
    totals: Accounting,
    stderr: Vec<String>,
    /// Whether anything was left at the socket path.
    socket_left: bool,
}

impl Stopped {
    /// Exit 0 within `timeout` (plus [`EXIT_SLACK`]), the books balanced, the
    /// socket file removed.
    #[track_caller]
    fn assert_clean_exit_within(&self, timeout: Duration) {
        assert_eq!(self.code, Some(0), "{:#?}", self.stderr);
        assert!(
            self.took <= timeout + EXIT_SLACK,
            "exit took {:?}",
            self.took
        );
        assert_accounting_totals(self.totals, 0);
        assert!(!self.socket_left, "the socket file is removed");
    }

    /// All `received` logs were still held at the stop and are counted `shutdown`.
    #[track_caller]
    fn assert_all_counted_shutdown(&self, received: u64) {
        let totals = self.totals;
        assert_eq!(totals.received, received, "{totals:?}");
        assert_eq!(totals.forwarded, 0, "{totals:?}");
        assert_eq!(totals.dropped_shutdown, received, "{totals:?}");
    }
}

/// Loads `binary` until it has received `logs` logs from every writer, sends
/// SIGTERM and waits for the exit: what [`Binary::wait`] reports, and the frames
/// the writers wrote whole.
async fn sigterm_under_load(
    binary: Binary,
    logs: u64,
) -> (Option<i32>, Duration, Accounting, Vec<String>, usize) {
    let load = Load::start(&binary.socket);
    load.wait_for(logs, || binary.received()).await;
    let (code, took, totals, lines) = binary.terminate_within(Duration::from_secs(15)).await;
    (code, took, totals, lines, load.finish())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_with_coderd_up_delivers_everything_buffered_and_exits_0() {
    let coderd = FakeCoderd::start().await;
    let binary = Binary::serve(&coderd.addr(), &["--shutdown-timeout", "10s"]).await;
    let (code, _, totals, lines, written) = sigterm_under_load(binary, 20_000).await;
    assert_eq!(code, Some(0), "{lines:#?}");
    assert_accounting_totals(totals, 0);
    assert_eq!(totals.dropped_shutdown, 0, "{totals:?}");
    assert_eq!(totals.dropped_forward_failed, 0, "{totals:?}");
    assert_eq!(
        totals.received,
        (written * LOGS_PER_FRAME) as u64,
        "every frame written whole was received"
    );
    assert_eq!(coderd.logs_received() as u64, totals.forwarded);
    let sessions = delivered(&coderd.requests());
    assert_eq!(sessions.len(), WRITERS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_coderd_down_counts_leftovers_as_shutdown_within_the_deadline() {
    let mut coderd = FakeCoderd::start().await;
    coderd.stop().await;
    const TIMEOUT: Duration = Duration::from_secs(2);
    const SLACK: Duration = Duration::from_secs(2);
    let binary = Binary::serve(
        &coderd.addr(),
        &[
            "--shutdown-timeout",
            "2s",
            "--retry-max-elapsed",
            "5m",
            "--ring-capacity",
            "1024",
        ],
    )
    .await;
    let (code, took, totals, lines, written) = sigterm_under_load(binary, 5_000).await;
    assert_eq!(code, Some(0), "{lines:#?}");
    assert!(took <= TIMEOUT + SLACK, "exit took {took:?}");
    assert_accounting_totals(totals, 0);
    assert_eq!(totals.forwarded, 0);
    assert_eq!(
        totals.dropped_forward_failed, 0,
        "the retry budget was not spent"
    );
    assert!(totals.dropped_shutdown > 0, "{totals:?}");
    assert!(
        totals.dropped_buffer_full > 0,
        "a 1024-slot ring overflowed"
    );
    assert_eq!(
        totals.received,
        (written * LOGS_PER_FRAME) as u64,
        "every frame written whole was received"
    );
}

/// Margin allowed past `--shutdown-timeout` for the exit (process start-up of the
/// stop path and scheduling on a loaded machine; not a timing measurement).
const EXIT_SLACK: Duration = Duration::from_secs(3);

/// `frames` frames of two logs each, written on one connection and received.
async fn held_logs(binary: &Binary, session: &str, frames_count: usize) -> UnixStream {
    let mut client = UnixStream::connect(&binary.socket).expect("connect");
    for frame in frames(session, 0, frames_count, LOGS_PER_FRAME) {
        client.write_all(&frame).expect("write a frame");
    }
    binary
        .wait_received((frames_count * LOGS_PER_FRAME) as u64)
        .await;
    client
}

/// The binary with `--shutdown-timeout shutdown_timeout`, holding 100 logs of `session`
/// while its forwarder is stuck in a call coderd never answers. The coderd and the client
/// are returned to be kept alive.
async fn stuck_in_a_call(
    session: &str,
    shutdown_timeout: &str,
) -> (FakeCoderd, Binary, UnixStream) {
    let coderd = FakeCoderd::start().await;
    coderd.set_behaviour(Behaviour::normal().with_delay(Duration::from_secs(3600)));
    let binary = Binary::serve(&coderd.addr(), &["--shutdown-timeout", shutdown_timeout]).await;
    let client = held_logs(&binary, session, 50).await;
    assert!(
        coderd.wait_for_calls(1, PATIENCE).await,
        "the forwarder is stuck in a call"
    );
    (coderd, binary, client)
}

/// A terminal, ssh session or tmux pane closing sends SIGHUP: the proxy stops as
/// on SIGTERM, not at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_coderd_stalled_counts_held_logs_as_shutdown_removes_the_socket_and_exits_0() {
    let (_coderd, binary, _client) = stuck_in_a_call("hup", "1s").await;
    let stopped = binary.stop_with(libc::SIGHUP, PATIENCE).await;
    stopped.assert_clean_exit_within(Duration::from_secs(1));
    stopped.assert_all_counted_shutdown(100);
}

/// An operator who does not want to wait out a long `--shutdown-timeout` signals again:
/// the second stop signal ends the drain at once, and what is still held is counted
/// `shutdown` as at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_signal_ends_the_drain_at_once_and_counts_what_is_held() {
    let (_coderd, mut binary, _client) = stuck_in_a_call("twice", "60s").await;
    binary.process.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(binary.process.is_running(), "draining, within the 60 s");
    let stopped = binary.stop_with(libc::SIGINT, PATIENCE).await;
    stopped.assert_clean_exit_within(Duration::ZERO);
    stopped.assert_all_counted_shutdown(100);
    assert!(
        stopped
            .stderr
            .iter()
            .any(|line| line.contains("second stop signal")),
        "{:#?}",
        stopped.stderr
    );
}

/// The second stop signal also ends the wait for a reporter call that blocks its
/// thread: `--sink stdout` into a pipe nobody reads (found by a review: the drain was
/// cut, then the exit still waited the whole `--shutdown-timeout` for the blocked
/// write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_signal_ends_the_drain_at_once_while_a_write_to_stdout_blocks() {
    let (_reader, writer) = std::io::pipe().expect("a pipe");
    let mut binary = Binary::start(
        &["--sink", "stdout"],
        &["--shutdown-timeout", "60s"],
        Stdio::from(writer),
    )
    .await;
    // 2000 logs are ~600 KB of JSON lines: far more than a pipe holds.
    let _client = held_logs(&binary, "pipe-twice", 1000).await;
    binary.process.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(binary.process.is_running(), "draining, within the 60 s");
    let stopped = binary.stop_with(libc::SIGINT, PATIENCE).await;
    stopped.assert_clean_exit_within(Duration::ZERO);
    let totals = stopped.totals;
    assert_eq!(totals.received, 2000, "{totals:?}");
    assert!(totals.dropped_shutdown > 0, "{totals:?}");
}

/// A terminal, ssh session or tmux pane closing sends SIGHUP twice (the shell's, then
/// the kernel's as the shell exits): that is one request to stop, and the drain goes on.
/// A SIGTERM after it still ends the drain at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_terminals_second_sighup_does_not_cut_the_drain_short() {
    let (_coderd, mut binary, _client) = stuck_in_a_call("hangup", "60s").await;
    binary.process.signal(libc::SIGHUP);
    // Apart, so that the kernel does not merge them into one pending signal.
    tokio::time::sleep(Duration::from_millis(200)).await;
    binary.process.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        binary.process.is_running(),
        "a second SIGHUP ended the drain:\n{}",
        binary.process.stderr.get().join("\n")
    );
    let stopped = binary.stop_with(libc::SIGTERM, PATIENCE).await;
    stopped.assert_clean_exit_within(Duration::ZERO);
    stopped.assert_all_counted_shutdown(100);
}

/// SIGUSR1, SIGUSR2 and SIGPIPE mean nothing to the proxy: it logs and ignores
/// them (their default action would kill it, buffered logs lost uncounted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_sigusr2_and_sigpipe_are_ignored_and_sigterm_still_stops_cleanly() {
    let coderd = FakeCoderd::start().await;
    let mut binary = Binary::serve(&coderd.addr(), &["--shutdown-timeout", "2s"]).await;
    for signal in [libc::SIGUSR1, libc::SIGUSR2, libc::SIGPIPE] {
        binary.process.signal(signal);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            binary.process.is_running(),
            "signal {signal} killed the proxy:\n{}",
            binary.process.stderr.get().join("\n")
        );
    }
    let _client = held_logs(&binary, "usr", 10).await;
    let stopped = binary.stop_with(libc::SIGTERM, PATIENCE).await;
    assert_eq!(stopped.code, Some(0), "{:#?}", stopped.stderr);
    assert_eq!(stopped.totals.received, 20, "{:?}", stopped.totals);
    assert_eq!(stopped.totals.forwarded, 20, "{:?}", stopped.totals);
    assert!(!stopped.socket_left, "the socket file is removed");
}

/// `--sink stdout` into a pipe whose reader stopped reading: the write blocks, and
/// cannot be cancelled. SIGTERM still ends the process within the shutdown timeout
/// (plus a bounded margin); what was not written is counted `shutdown`, and a log
/// counts as forwarded only once its line was written whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_stdout_a_pipe_nobody_reads_exits_within_the_deadline() {
    let (mut reader, writer) = std::io::pipe().expect("a pipe");
    let binary = Binary::start(
        &["--sink", "stdout"],
        &["--shutdown-timeout", "1s"],
        Stdio::from(writer),
    )
    .await;
    // 2000 logs are ~600 KB of JSON lines: far more than a pipe holds.
    let _client = held_logs(&binary, "pipe", 1000).await;
    let stopped = binary
        .stop_with(libc::SIGTERM, Duration::from_secs(15))
        .await;
    stopped.assert_clean_exit_within(Duration::from_secs(1));
    let totals = stopped.totals;
    assert_eq!(totals.received, 2000, "{totals:?}");
    assert!(totals.dropped_shutdown > 0, "{totals:?}");
    let mut printed = String::new();
    std::io::Read::read_to_string(&mut reader, &mut printed).expect("read the pipe");
    let whole_lines = printed.matches('\n').count() as u64;
    assert!(
        totals.forwarded <= whole_lines,
        "{} logs counted forwarded but only {whole_lines} lines written",
        totals.forwarded
    );
}

/// A coderd that accepts the TCP connection and never answers anything (not even
/// the HTTP/2 handshake): the call cannot finish, the deadline still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_coderd_accepting_and_never_answering_exits_within_the_deadline() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", silent.local_addr().unwrap());
    let binary = Binary::serve(&url, &["--shutdown-timeout", "1s", "--call-timeout", "60s"]).await;
    let _client = held_logs(&binary, "silent", 50).await;
    let stopped = binary
        .stop_with(libc::SIGTERM, Duration::from_secs(15))
        .await;
    stopped.assert_clean_exit_within(Duration::from_secs(1));
    stopped.assert_all_counted_shutdown(100);
    drop(silent);
}

/// The null sink never blocks; under full load the deadline holds too and every
/// log is accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_null_sink_under_load_exits_within_the_deadline() {
    let binary = Binary::start(
        &["--sink", "null"],
        &["--shutdown-timeout", "1s"],
        Stdio::piped(),
    )
    .await;
    let (code, took, totals, lines, written) = sigterm_under_load(binary, 20_000).await;
    assert_eq!(code, Some(0), "{lines:#?}");
    assert!(
        took <= Duration::from_secs(1) + EXIT_SLACK,
        "exit took {took:?}"
    );
    assert_accounting_totals(totals, 0);
    assert_eq!(
        totals.received,
        (written * LOGS_PER_FRAME) as u64,
        "every frame written whole was received"
    );
}

/// The proxy's own log (stderr) going to a pipe nobody reads, filled by trace
/// lines: logging never blocks the proxy, and SIGTERM still ends it within the
/// shutdown timeout plus a bounded margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_stderr_a_pipe_nobody_reads_exits_within_the_deadline() {
    let (mut log_reader, log_writer) = std::io::pipe().expect("a pipe");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("proxy.sock");
    let mut process = Process::spawn_with_stdio(
        &[
            "serve",
            "--socket",
            socket.to_str().unwrap(),
            "--sink",
            "null",
            "--shutdown-timeout",
            "1s",
            "--log-level",
            "trace",
        ],
        Stdio::null(),
        Stdio::from(log_writer),
    );
    let until = Instant::now() + PATIENCE;
    let mut client = loop {
        if let Ok(client) = UnixStream::connect(&socket) {
            break client;
        }
        assert!(Instant::now() < until, "the proxy never served its socket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Each frame logs at trace level: 5000 frames fill a 64 KiB pipe many times
    // over. (A proxy stalled by its log would stop reading: give up writing then.)
    client
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    for frame in frames("noisy", 0, 5000, LOGS_PER_FRAME) {
        if client.write_all(&frame).is_err() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(process.is_running(), "the proxy is alive");
    let started = Instant::now();
    process.signal(libc::SIGTERM);
    let exited = process.wait_within(Duration::from_secs(15)).await;
    let took = started.elapsed();
    assert_eq!(exited.status.code(), Some(0));
    assert!(
        took <= Duration::from_secs(1) + EXIT_SLACK,
        "exit took {took:?}"
    );
    assert!(!socket.exists(), "the socket file is removed");
    let mut logged = Vec::new();
    std::io::Read::read_to_end(&mut log_reader, &mut logged).expect("read the log pipe");
    assert!(
        logged.len() > 60 * 1024,
        "the pipe filled up: {} bytes",
        logged.len()
    );
}

/// The coder transport (websocket, yamux, DRPC) to a coderd that takes each call and
/// never answers it: the deadline holds, the held logs are counted `shutdown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_coder_calls_never_answered_exits_within_the_deadline() {
    let peer = CoderPeer::start(PeerConfig::default()).await;
    for _ in 0..16 {
        peer.script(Answer::Silent);
    }
    let url = peer.url.to_string();
    let binary = Binary::start(
        &["--coder-url", &url, "--agent-token", "t0ken"],
        &["--shutdown-timeout", "1s", "--call-timeout", "60s"],
        Stdio::piped(),
    )
    .await;
    let _client = held_logs(&binary, "coder", 50).await;
    let stopped = binary
        .stop_with(libc::SIGTERM, Duration::from_secs(15))
        .await;
    stopped.assert_clean_exit_within(Duration::from_secs(1));
    stopped.assert_all_counted_shutdown(100);
}
