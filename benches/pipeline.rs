//! End-to-end throughput over real sockets, side by side in one run:
//!
//! - `pipeline/null`: socket -> reader -> ring -> forwarder -> null reporter;
//! - `pipeline/sink`: the same, forwarding through tonic to the project's `Sink`
//!   service (quiet, loopback TCP, in-process on its own runtime, 4 MiB HTTP/2
//!   windows); `pipeline/sink64k` (8 connections only): the same with h2's default
//!   64 KiB windows, as `boundary-log-proxy sink` serves today;
//! - `pipeline/sinkcount`: the same as `pipeline/sink` but the receiver only counts
//!   each request's logs (`counting_sink/`), standing in for a coderd on other
//!   cores: the difference to `pipeline/sink` is the sink's own prost decoding;
//! - `pipeline/baseline`: coder's design (`baseline/`) forwarding to the same sink;
//!   `pipeline/baselinecount`: the same forwarding to the counting receiver;
//! - `idle_connections/null`: the null pipeline with 0 and 10,000 idle connections open.
//!
//! Writers are `loadgen::SessionStream`s (one session per connection, sequence
//! numbers running on across iterations). Each iteration writes a fixed number of
//! logs and ends when the reporter or sink has counted them all. Writers keep at most
//! the design's own buffer in flight (the ring's 4096 frames, the baseline's channel
//! of 100), so neither design drops; every benchmark asserts it dropped nothing.
//! Before measuring, one open-loop pass per configuration (writers as fast as they
//! can) reports on stderr what each design drops without that flow control.

mod baseline;
mod counting_sink;

use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use boundary_log_proxy::codec::Tag;
use boundary_log_proxy::config::SinkKind;
use boundary_log_proxy::loadgen::{SessionStream, Timestamps};
use boundary_log_proxy::metrics::Metrics;
use boundary_log_proxy::reporter::grpc::{GrpcReporter, GrpcReporterConfig};
use boundary_log_proxy::reporter::null::NullReporter;
use boundary_log_proxy::sink::{Sink, SinkListener};
use boundary_log_proxy::{Config, Server};
use counting_sink::CountingSink;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

/// Logs each engine iteration sends (rounded up to whole frames on every connection).
const ENGINE_LOGS: u64 = 200_000;
/// Logs each baseline iteration sends: it is one to two orders of magnitude slower.
const BASELINE_LOGS: u64 = 20_000;
const CONNECTIONS: [u32; 3] = [1, 8, 64];
const LOGS_PER_FRAME: [u32; 2] = [10, 100];
/// Idle connections held open in `idle_connections`.
const IDLE: usize = 10_000;
/// Ring slots of the engine under test (the documented default).
const RING_CAPACITY: usize = 4096;
/// Longest an iteration may take before the bench gives up on it.
const ITERATION_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes per write when the window allows.
const WRITE_BYTES: usize = 256 * 1024;

/// A system under test: where to connect, and what it delivered or dropped so far.
trait Target: Sync {
    fn socket(&self) -> &Path;
    /// Logs the reporter or sink has counted.
    fn delivered(&self) -> u64;
    /// Logs dropped for any reason.
    fn dropped(&self) -> u64;
    /// Frames the design buffers; writers keep at most this many in flight.
    fn window_frames(&self) -> u64;
}

/// Runtimes shared by every configuration: one for the proxy's forwarder (as
/// `serve` has), one for the sink.
struct Runtimes {
    proxy: Runtime,
    sink: Runtime,
}

impl Runtimes {
    fn new() -> Self {
        let build = |name: &str| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(name)
                .enable_all()
                .build()
                .expect("runtime")
        };
        Self {
            proxy: build("blp-runtime"),
            sink: build("bench-sink"),
        }
    }
}

/// A quiet receiver on loopback TCP, served until dropped.
struct RunningSink {
    logs: Arc<dyn Fn() -> u64 + Send + Sync>,
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// HTTP/2 receive windows of the sink. h2's default (64 KiB) makes every 1000-log
/// request (~145 KB) wait for window updates from the sink; coderd's grpc-go grows
/// its windows by bandwidth-delay estimation (up to 16 MiB). `pipeline/sink64k`
/// measures the default for comparison.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SinkWindow {
    Large,
    H2Default,
}

/// What receives the proxy's calls.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Receiver {
    /// The project's `Sink`: decodes every request with prost.
    Decoding,
    /// `counting_sink::CountingSink`: counts each request's logs without decoding
    /// them, as a stand-in for a coderd on other cores.
    Counting,
}

impl RunningSink {
    fn start(runtime: &Runtime, window: SinkWindow, receiver: Receiver) -> Self {
        let listener = runtime
            .block_on(SinkListener::bind("127.0.0.1:0"))
            .expect("bind the sink");
        let url = listener.url();
        let SinkListener::Tcp(listener) = listener else {
            unreachable!("bound a TCP address")
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder();
        if window == SinkWindow::Large {
            builder = builder
                .initial_stream_window_size(Some(4 << 20))
                .initial_connection_window_size(Some(8 << 20));
        }
        let (server, logs): (_, Arc<dyn Fn() -> u64 + Send + Sync>) = match receiver {
            Receiver::Decoding => {
                let sink = Sink::quiet();
                let router = builder.add_service(sink.service());
                (router, Arc::new(move || sink.logs()))
            }
            Receiver::Counting => {
                let sink = CountingSink::default();
                let router = builder.add_service(sink.clone());
                (router, Arc::new(move || sink.logs()))
            }
        };
        runtime.spawn(async move {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            let _ = server
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            logs,
            url,
            stop: Some(stop),
        }
    }
}

impl Drop for RunningSink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Where the engine forwards.
enum Destination {
    Null,
    Sink(SinkWindow, Receiver),
}

/// The proxy engine (`Server`) with its forwarder running.
struct Engine {
    server: Server,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    forwarder: Option<tokio::task::JoinHandle<()>>,
    delivered: Box<dyn Fn() -> u64 + Send + Sync>,
    _sink: Option<RunningSink>,
    _dir: tempfile::TempDir,
}

impl Engine {
    fn start(runtimes: &Runtimes, destination: Destination, max_connections: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            socket: dir.path().join("proxy.sock"),
            sink: Some(SinkKind::Null),
            ring_capacity: RING_CAPACITY,
            max_connections,
            shutdown_timeout: Duration::from_secs(1),
            ..Config::default()
        };
        let server = Server::new(config, &prometheus::Registry::new()).expect("server");
        server.start().expect("start");
        let metrics = server.metrics().clone();
        let cancel = CancellationToken::new();
        let (delivered, sink, forwarder): (Box<dyn Fn() -> u64 + Send + Sync>, _, _) =
            match destination {
                Destination::Null => {
                    let reporter = Arc::new(NullReporter::new());
                    let counted = reporter.clone();
                    let (server, cancel) = (server.clone(), cancel.clone());
                    let task = runtimes.proxy.spawn(async move {
                        server
                            .run_forwarder(cancel, reporter)
                            .await
                            .expect("forwarder");
                    });
                    (Box::new(move || counted.logs()), None, task)
                }
                Destination::Sink(window, receiver) => {
                    let sink = RunningSink::start(&runtimes.sink, window, receiver);
                    let counted = sink.logs.clone();
                    let reporter = {
                        let _guard = runtimes.proxy.enter();
                        GrpcReporter::new(GrpcReporterConfig::new(sink.url.clone()))
                            .expect("reporter")
                    };
                    let (server, cancel) = (server.clone(), cancel.clone());
                    let task = runtimes.proxy.spawn(async move {
                        server
                            .run_forwarder(cancel, reporter)
                            .await
                            .expect("forwarder");
                    });
                    (Box::new(move || counted()), Some(sink), task)
                }
            };
        Self {
            server,
            metrics,
            cancel,
            forwarder: Some(forwarder),
            delivered,
            _sink: sink,
            _dir: dir,
        }
    }

    fn close(mut self, runtimes: &Runtimes) {
        self.cancel.cancel();
        if let Some(task) = self.forwarder.take() {
            let _ = runtimes.proxy.block_on(task);
        }
        self.server.close();
    }
}

impl Target for Engine {
    fn socket(&self) -> &Path {
        self.server.socket_path()
    }
    fn delivered(&self) -> u64 {
        (self.delivered)()
    }
    fn dropped(&self) -> u64 {
        let a = self.metrics.accounting();
        a.dropped_buffer_full + a.dropped_forward_failed + a.dropped_shutdown
    }
    fn window_frames(&self) -> u64 {
        RING_CAPACITY as u64
    }
}

/// Coder's design and the sink it forwards to.
struct Reference {
    baseline: baseline::Baseline,
    sink: RunningSink,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Reference {
    fn start(runtimes: &Runtimes, receiver: Receiver) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("baseline.sock");
        let sink = RunningSink::start(&runtimes.sink, SinkWindow::Large, receiver);
        let baseline = baseline::Baseline::start(&socket, sink.url.clone()).expect("baseline");
        Self {
            baseline,
            sink,
            socket,
            _dir: dir,
        }
    }
}

impl Target for Reference {
    fn socket(&self) -> &Path {
        &self.socket
    }
    fn delivered(&self) -> u64 {
        (self.sink.logs)()
    }
    fn dropped(&self) -> u64 {
        self.baseline.counters().dropped_logs()
    }
    fn window_frames(&self) -> u64 {
        baseline::CHANNEL_CAPACITY as u64
    }
}

/// The writers of one configuration: open connections and their sessions.
struct Load {
    conns: Vec<UnixStream>,
    streams: Vec<SessionStream>,
    logs_per_frame: u32,
    frames_per_conn: u64,
}

/// One iteration's bytes: per connection, chunks of whole frames and their logs.
type Prepared = Vec<Vec<(Vec<u8>, u64)>>;

impl Load {
    fn connect(socket: &Path, connections: u32, logs_per_frame: u32, logs: u64) -> Self {
        let conns = (0..connections)
            .map(|_| UnixStream::connect(socket).expect("connect"))
            .collect();
        let streams = (0..connections)
            .map(|i| SessionStream::new(i, logs_per_frame, Tag::V2).expect("stream"))
            .collect();
        let per_round = u64::from(connections) * u64::from(logs_per_frame);
        Self {
            conns,
            streams,
            logs_per_frame,
            frames_per_conn: logs.div_ceil(per_round),
        }
    }

    fn logs(&self) -> u64 {
        self.frames_per_conn * u64::from(self.logs_per_frame) * self.conns.len() as u64
    }

    /// Assembles the next iteration's frames (untimed), in chunks of at most
    /// `chunk_frames` frames.
    fn prepare(&mut self, chunk_frames: u64) -> Prepared {
        self.streams
            .iter_mut()
            .map(|stream| {
                let mut chunks = Vec::new();
                let mut left = self.frames_per_conn;
                while left > 0 {
                    let n = chunk_frames.min(left);
                    let mut buf = Vec::new();
                    stream.append_frames(n, Timestamps::Workload, &mut buf);
                    chunks.push((buf, n * u64::from(self.logs_per_frame)));
                    left -= n;
                }
                chunks
            })
            .collect()
    }

    /// Frames per write: the window shared out between the connections (half of it,
    /// so writers do not wait on each other), at most `WRITE_BYTES`.
    fn chunk_frames(&self, window: Option<u64>) -> u64 {
        let frame_bytes = 150 * u64::from(self.logs_per_frame);
        let by_bytes = (WRITE_BYTES as u64 / frame_bytes).max(1);
        match window {
            Some(window) => (window / (2 * self.conns.len() as u64)).clamp(1, by_bytes),
            None => by_bytes,
        }
    }

    /// Writes `prepared` on every connection at once, keeping at most `window`
    /// frames written but not delivered (`None`: no limit), then waits until
    /// everything is delivered or dropped. Returns the time taken.
    fn send(&self, prepared: Prepared, target: &dyn Target, window: Option<u64>) -> Duration {
        let start_delivered = target.delivered();
        let start_dropped = target.dropped();
        let total = self.logs();
        let window = window.map(|w| Window::new(w * u64::from(self.logs_per_frame)));
        let settled = || target.delivered() - start_delivered + target.dropped() - start_dropped;
        let started = Instant::now();
        std::thread::scope(|scope| {
            let writers: Vec<_> = self
                .conns
                .iter()
                .zip(prepared)
                .map(|(conn, chunks)| {
                    let window = window.as_ref();
                    scope.spawn(move || {
                        let mut conn = conn;
                        for (chunk, logs) in chunks {
                            if let Some(window) = window {
                                window.acquire(logs);
                            }
                            conn.write_all(&chunk).expect("write");
                        }
                    })
                })
                .collect();
            if let Some(window) = &window {
                scope.spawn(|| window.watch(&settled));
            }
            for writer in writers {
                writer.join().expect("writer");
            }
            if let Some(window) = &window {
                window.close();
            }
        });
        let deadline = started + ITERATION_TIMEOUT;
        loop {
            let delivered = target.delivered() - start_delivered;
            let dropped = target.dropped() - start_dropped;
            if delivered + dropped >= total {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "iteration stuck: {delivered} of {total} logs delivered, {dropped} dropped"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        started.elapsed()
    }

    /// One timed iteration with flow control, asserting nothing was dropped.
    fn iteration(&mut self, target: &dyn Target) -> Duration {
        let window = target.window_frames();
        let prepared = self.prepare(self.chunk_frames(Some(window)));
        let dropped = target.dropped();
        let took = self.send(prepared, target, Some(window));
        assert_eq!(target.dropped(), dropped, "dropped logs at zero-drop load");
        took
    }

    /// One untimed pass without flow control: what the design delivers and drops.
    fn open_loop(&mut self, target: &dyn Target, name: &str) {
        let prepared = self.prepare(self.chunk_frames(None));
        let (delivered, dropped) = (target.delivered(), target.dropped());
        let took = self.send(prepared, target, None);
        let delivered = target.delivered() - delivered;
        let dropped = target.dropped() - dropped;
        eprintln!(
            "open loop {name}: {} logs written, {delivered} delivered, {dropped} dropped ({:.1}%), {:.0} delivered logs/s",
            self.logs(),
            100.0 * dropped as f64 / self.logs() as f64,
            delivered as f64 / took.as_secs_f64()
        );
    }
}

/// Flow control of one iteration: at most `limit` logs written but not settled
/// (delivered or dropped). One watcher thread polls the target and wakes the
/// writers, so 64 writers do not each poll.
struct Window {
    limit: u64,
    sent: Mutex<u64>,
    progress: Condvar,
    settled: AtomicU64,
    closed: AtomicBool,
}

impl Window {
    fn new(limit: u64) -> Self {
        Self {
            limit,
            sent: Mutex::new(0),
            progress: Condvar::new(),
            settled: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// Waits until `logs` more fit, then claims them.
    fn acquire(&self, logs: u64) {
        let mut sent = self.sent.lock().expect("window");
        while *sent + logs > self.settled.load(Ordering::Acquire) + self.limit.max(logs) {
            sent = self
                .progress
                .wait_timeout(sent, Duration::from_millis(1))
                .expect("window")
                .0;
        }
        *sent += logs;
    }

    /// Publishes the target's progress every 50 us until closed.
    fn watch(&self, settled: &dyn Fn() -> u64) {
        let mut last = 0;
        while !self.closed.load(Ordering::Acquire) {
            let now = settled();
            if now != last {
                last = now;
                self.settled.store(now, Ordering::Release);
                drop(self.sent.lock().expect("window"));
                self.progress.notify_all();
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// Runs one benchmark function against `target`, connections opened once.
fn measure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    target: &dyn Target,
    connections: u32,
    logs_per_frame: u32,
    logs: u64,
) {
    let mut load = Load::connect(target.socket(), connections, logs_per_frame, logs);
    load.open_loop(target, name);
    group.throughput(Throughput::Elements(load.logs()));
    let (function, parameter) = name.split_once('/').expect("function/parameter");
    group.bench_function(BenchmarkId::new(function, parameter), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| load.iteration(target)).sum())
    });
    drop(load);
}

fn pipeline(c: &mut Criterion) {
    let runtimes = Runtimes::new();
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    for logs_per_frame in LOGS_PER_FRAME {
        for connections in CONNECTIONS {
            let param = format!("c{connections}_l{logs_per_frame}");
            for name in ["null", "sink", "sinkcount", "sink64k"] {
                let id = format!("{name}/{param}");
                if !selected(&format!("pipeline/{id}")) || (name == "sink64k" && connections != 8) {
                    continue;
                }
                let destination = match name {
                    "null" => Destination::Null,
                    "sink" => Destination::Sink(SinkWindow::Large, Receiver::Decoding),
                    "sinkcount" => Destination::Sink(SinkWindow::Large, Receiver::Counting),
                    _ => Destination::Sink(SinkWindow::H2Default, Receiver::Decoding),
                };
                let engine = Engine::start(&runtimes, destination, 1024);
                measure(
                    &mut group,
                    &id,
                    &engine,
                    connections,
                    logs_per_frame,
                    ENGINE_LOGS,
                );
                engine.close(&runtimes);
            }
            for (name, receiver) in [
                ("baseline", Receiver::Decoding),
                ("baselinecount", Receiver::Counting),
            ] {
                let id = format!("{name}/{param}");
                if selected(&format!("pipeline/{id}")) {
                    let reference = Reference::start(&runtimes, receiver);
                    measure(
                        &mut group,
                        &id,
                        &reference,
                        connections,
                        logs_per_frame,
                        BASELINE_LOGS,
                    );
                }
            }
        }
    }
    group.finish();
}

fn idle_connections(c: &mut Criterion) {
    let runtimes = Runtimes::new();
    let mut group = c.benchmark_group("idle_connections");
    group.sample_size(10);
    for idle in [0, IDLE] {
        let id = format!("null_c8_l10/{idle}");
        if !selected(&format!("idle_connections/{id}")) {
            continue;
        }
        raise_fd_limit(IDLE as u64 + 1024);
        let engine = Engine::start(&runtimes, Destination::Null, IDLE + 64);
        let held = IdleHolder::start(engine.socket(), idle);
        // Every idle connection accepted before measuring.
        let deadline = Instant::now() + Duration::from_secs(30);
        while (engine.metrics.connections.get() as usize) < idle && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            engine.metrics.connections.get() as usize,
            idle,
            "idle connections accepted (rejected for the limit: {})",
            engine
                .metrics
                .connections_rejected
                .with_label_values(&["limit"])
                .get()
        );
        measure(&mut group, &id, &engine, 8, 10, ENGINE_LOGS);
        drop(held);
        engine.close(&runtimes);
    }
    group.finish();
}

/// Whether the name filter given on the command line (`cargo bench --bench pipeline
/// -- FILTER`, matched here as a substring of `group/function/parameter`; a regular
/// expression selects everything here and criterion filters) selects the benchmark,
/// so a filtered run does not set up servers it will not measure.
fn selected(name: &str) -> bool {
    // Criterion options that take a value.
    const VALUED: [&str; 12] = [
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--profile-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
    ];
    let mut args = std::env::args().skip(1);
    let mut filters = Vec::new();
    while let Some(arg) = args.next() {
        if VALUED.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            filters.push(arg);
        }
    }
    // A regular expression is left to criterion: set everything up.
    let regex = |f: &String| f.contains(|c: char| "()|[]*+?^$\\.".contains(c));
    filters.is_empty()
        || filters
            .iter()
            .any(|f| regex(f) || name.contains(f.as_str()))
}

/// A child process holding `count` idle connections open (the clients' descriptors
/// would not fit beside the server's under this machine's hard limit of 20,000 open
/// files per process). Python, so the bench needs no helper binary.
struct IdleHolder {
    child: std::process::Child,
}

const HOLDER: &str = r#"
import resource, socket, sys
path, count = sys.argv[1], int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    held.append(s)
print("ready", flush=True)
sys.stdin.read()
"#;

impl IdleHolder {
    fn start(socket: &Path, count: usize) -> Self {
        use std::io::BufRead as _;
        use std::process::{Command, Stdio};
        let mut child = Command::new("python3")
            .args(["-c", HOLDER])
            .arg(socket)
            .arg(count.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 for the idle-connection holder");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("holder stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("holder ready line");
        assert_eq!(line.trim(), "ready", "idle-connection holder failed");
        Self { child }
    }
}

impl Drop for IdleHolder {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Raises the open-files limit to at least `want` (as root, the hard limit too).
fn raise_fd_limit(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur >= want {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: limit.rlim_max.max(want),
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        let soft = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) };
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = pipeline, idle_connections
}
criterion_main!(benches);
