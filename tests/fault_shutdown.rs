//! Shutdown under full load. In process: every frame a client managed to write
//! before the reader stopped is received (nothing written successfully is thrown
//! away). Through the real binary: SIGTERM with coderd up delivers everything
//! buffered and exits 0; with coderd down the leftovers are counted as `shutdown`
//! and the exit comes within the shutdown timeout. Each test checks the accounting
//! invariant exactly.

mod support;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boundary_log_proxy::config::IoMode;
use boundary_log_proxy::metrics::{Accounting, FrameRejectReason};
use serde_json::Value;
use support::coderd::FakeCoderd;
use support::faults::{assert_invariant, delivered, frames, sample, Proxy, PATIENCE};

const BIN: &str = env!("CARGO_BIN_EXE_boundary-log-proxy");
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
    async fn wait_for(&self, logs: f64, received: impl Fn() -> f64) {
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
    load.wait_for(20_000.0, || proxy.accounting().received as f64)
        .await;

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
    assert_invariant(&totals, 0);
}

/// The binary, serving with the given extra flags and JSON logs on a piped stderr.
struct Binary {
    child: Child,
    socket: std::path::PathBuf,
    metrics: std::net::SocketAddr,
    stderr: std::thread::JoinHandle<Vec<String>>,
    _dir: tempfile::TempDir,
}

impl Binary {
    fn serve(coderd: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy.sock");
        let metrics = free_port();
        let mut command = Command::new(BIN);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("BOUNDARY_LOG_PROXY_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .args(["serve", "--socket"])
            .arg(&socket)
            .args(["--coderd", coderd, "--metrics-addr", &metrics.to_string()])
            .args(["--log-format", "json", "--log-level", "info"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the binary");
        let stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .collect()
        });
        let until = Instant::now() + PATIENCE;
        while !(socket.exists() && scrape(metrics).is_some()) {
            assert!(Instant::now() < until, "the binary did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            socket,
            metrics,
            stderr,
            _dir: dir,
        }
    }

    fn received(&self) -> f64 {
        scrape(self.metrics)
            .and_then(|text| sample(&text, "agent_boundary_log_proxy_logs_received_total"))
            .unwrap_or(0.0)
    }

    fn sigterm(&self) {
        // SAFETY: plain syscall; the child is ours and not yet reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0);
    }

    /// Waits for the exit; returns the status code, the time it took and the
    /// counts of the final "stopped" line.
    fn wait(mut self, limit: Duration) -> (Option<i32>, Duration, Accounting, Vec<String>) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                panic!("the binary did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = started.elapsed();
        let lines = self.stderr.join().unwrap();
        let stopped = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["fields"]["message"] == "stopped")
            .unwrap_or_else(|| panic!("no stopped line in {lines:#?}"));
        let count = |name: &str| {
            stopped["fields"][name]
                .as_u64()
                .unwrap_or_else(|| panic!("{name} missing: {stopped}"))
        };
        let totals = Accounting {
            received: count("received"),
            forwarded: count("forwarded"),
            dropped_buffer_full: count("dropped_buffer_full"),
            dropped_forward_failed: count("dropped_forward_failed"),
            dropped_shutdown: count("dropped_shutdown"),
        };
        (status.code(), took, totals, lines)
    }
}

fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// GET /metrics, or `None` while nothing listens.
fn scrape(addr: std::net::SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// Loads `binary` until it has received `logs` logs from every writer, sends
/// SIGTERM and waits for the exit: what [`Binary::wait`] reports, and the frames
/// the writers wrote whole.
async fn sigterm_under_load(
    binary: Binary,
    logs: f64,
) -> (Option<i32>, Duration, Accounting, Vec<String>, usize) {
    let load = Load::start(&binary.socket);
    load.wait_for(logs, || binary.received()).await;
    binary.sigterm();
    let (code, took, totals, lines) =
        tokio::task::spawn_blocking(move || binary.wait(Duration::from_secs(15)))
            .await
            .unwrap();
    (code, took, totals, lines, load.finish())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_with_coderd_up_delivers_everything_buffered_and_exits_0() {
    let coderd = FakeCoderd::start().await;
    let binary = Binary::serve(&coderd.addr(), &["--shutdown-timeout", "10s"]);
    let (code, _, totals, lines, written) = sigterm_under_load(binary, 20_000.0).await;
    assert_eq!(code, Some(0), "{lines:#?}");
    assert_invariant(&totals, 0);
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
    );
    let (code, took, totals, lines, written) = sigterm_under_load(binary, 5_000.0).await;
    assert_eq!(code, Some(0), "{lines:#?}");
    assert!(took <= TIMEOUT + SLACK, "exit took {took:?}");
    assert_invariant(&totals, 0);
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
