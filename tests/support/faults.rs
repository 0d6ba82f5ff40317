//! Helpers for the fault-injection tests: an in-process proxy (`Server` + forwarder
//! task) on a socket in a temp dir, frame builders, and
//! socket tricks (abortive close, fd counting).
//!
//! ```ignore
//! let coderd = FakeCoderd::start().await;
//! let proxy = Proxy::start_grpc(Proxy::config(), &coderd.addr()).await;
//! let mut client = proxy.connect();
//! client.write_all(&frames("s", 0, 10, 3).concat()).unwrap();
//! assert!(proxy.wait_settled(PATIENCE).await);
//! let totals = proxy.close().await;          // Server::close, forwarder joined
//! assert_accounting_totals(totals, 0);      // support::proxy
//! ```

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boundary_log_proxy::codec::Tag;
use boundary_log_proxy::config::{Config, IoMode};
use boundary_log_proxy::metrics::{Accounting, Metrics};
use boundary_log_proxy::reporter::grpc::{GrpcReporter, GrpcReporterConfig};
use boundary_log_proxy::{workload, Reporter, Server, ServerError};
use prometheus::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::coderd::Received;

/// How long a test waits for something that should happen well before.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The process name every test frame carries.
pub const PROCESS: &str = "claude-code";

/// An in-process proxy: a started `Server` and its forwarder running on the test's
/// runtime. `close` stops both and returns the final counts.
pub struct Proxy {
    pub server: Server,
    pub registry: Registry,
    _dir: tempfile::TempDir,
    cancel: CancellationToken,
    forwarder: Option<JoinHandle<Result<(), ServerError>>>,
}

impl Proxy {
    /// The documented defaults with the socket in a fresh temp dir (which
    /// `start` takes over) and the given reader backend.
    pub fn config(io: IoMode) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config {
            socket: dir.path().join("proxy.sock"),
            io,
            sink: None,
            ..Config::default()
        };
        (dir, config)
    }

    /// Starts the server and a forwarder delivering through `reporter`.
    pub async fn start<R: Reporter>(dir: tempfile::TempDir, config: Config, reporter: R) -> Self {
        let registry = Registry::new();
        let server = Server::new(config, &registry).expect("server builds");
        server.start().expect("server starts");
        let cancel = CancellationToken::new();
        let forwarder = {
            let (server, cancel) = (server.clone(), cancel.clone());
            tokio::spawn(async move { server.run_forwarder(cancel, reporter).await })
        };
        Self {
            server,
            registry,
            _dir: dir,
            cancel,
            forwarder: Some(forwarder),
        }
    }

    /// Starts the server delivering to the gRPC endpoint `url` (a `FakeCoderd`),
    /// with the config's call timeout.
    pub async fn start_grpc(dir: tempfile::TempDir, config: Config, url: &str) -> Self {
        let reporter = GrpcReporter::new(
            GrpcReporterConfig::new(url)
                .call_timeout(config.call_timeout)
                .connect_timeout(Duration::from_secs(1)),
        )
        .expect("gRPC reporter builds");
        Self::start(dir, config, reporter).await
    }

    /// Lets other users connect (socket dir searchable, socket mode from the config).
    pub fn open_dir_to_everyone(&self) {
        super::as_uid::open_dir_to_everyone(self.socket_path().parent().expect("socket dir"));
    }

    pub fn socket_path(&self) -> PathBuf {
        self.server.socket_path().to_owned()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        self.server.metrics()
    }

    pub fn accounting(&self) -> Accounting {
        self.metrics().accounting()
    }

    /// A blocking client connection.
    pub fn connect(&self) -> UnixStream {
        UnixStream::connect(self.server.socket_path()).expect("connect to the proxy")
    }

    /// Waits until `received` logs arrived and every one is settled (forwarded or
    /// dropped) with the ring empty.
    pub async fn wait_settled_at(&self, received: u64, timeout: Duration) -> bool {
        eventually(timeout, || {
            let a = self.accounting();
            a.received == received && a.pending() == Some(0) && self.server.ring_len() == 0
        })
        .await
    }

    /// Waits until every received log is settled and the ring is empty.
    pub async fn wait_settled(&self, timeout: Duration) -> bool {
        eventually(timeout, || {
            self.accounting().pending() == Some(0) && self.server.ring_len() == 0
        })
        .await
    }

    /// Waits until `received` logs were received (decoded by the intake).
    pub async fn wait_received(&self, received: u64, timeout: Duration) -> bool {
        eventually(timeout, || self.accounting().received >= received).await
    }

    /// The registry in Prometheus text format.
    pub fn scrape(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("metrics encode")
    }

    /// `Server::close` (stops the reader, counts leftovers as shutdown drops, removes
    /// the socket), then joins the forwarder. Returns the final counts.
    pub async fn close(mut self) -> Accounting {
        let server = self.server.clone();
        tokio::task::spawn_blocking(move || server.close())
            .await
            .expect("close does not panic");
        self.cancel.cancel();
        if let Some(forwarder) = self.forwarder.take() {
            let ended = tokio::time::timeout(PATIENCE, forwarder)
                .await
                .expect("the forwarder returns after close");
            match ended.expect("forwarder task") {
                Ok(()) | Err(ServerError::Closed) => {}
                Err(other) => panic!("forwarder failed: {other}"),
            }
        }
        assert!(
            !self.server.socket_path().exists(),
            "close removes the socket file"
        );
        self.accounting()
    }
}

/// A test's size knob: `BLP_SOAK_<NAME>` from the environment (set by
/// `scripts/soak.sh` for long runs), else `default` (what CI runs).
pub fn soak(name: &str, default: u64) -> u64 {
    let var = format!("BLP_SOAK_{name}");
    match std::env::var(&var) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{var}={value:?} is not a number")),
        Err(_) => default,
    }
}

/// Polls `done` every 5 ms until it holds; false on timeout.
pub async fn eventually(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `count` TagV2 frames of session `session`, each of `logs` logs, numbered on from
/// `first_seq`.
pub fn frames(session: &str, first_seq: i32, count: usize, logs: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let seq = first_seq + (i * logs) as i32;
            workload::frame(Tag::V2, &workload::request(session, PROCESS, seq, logs))
        })
        .collect()
}

/// Every delivered log's sequence number, by session, sorted (duplicates kept).
pub fn delivered(requests: &[Received]) -> BTreeMap<String, Vec<i32>> {
    let mut by_session: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for received in requests {
        let seqs = by_session
            .entry(received.request.session_id.clone())
            .or_default();
        seqs.extend(received.request.logs.iter().map(|l| l.sequence_number));
    }
    for seqs in by_session.values_mut() {
        seqs.sort_unstable();
    }
    by_session
}

/// Writes each frame with `write_all`; returns how many were written whole before
/// the first error (a frame is acknowledged once `write_all` returns for it).
pub fn write_frames(stream: &mut UnixStream, frames: &[Vec<u8>]) -> usize {
    frames
        .iter()
        .take_while(|frame| stream.write_all(frame).is_ok())
        .count()
}

/// Closes `stream` abortively: SO_LINGER 0, then close. (On a Unix socket the
/// proxy sees an ordinary end of stream: AF_UNIX has no RST.)
pub fn close_abortively(stream: UnixStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: passes a live local of the size given; the fd is open (owned by `stream`).
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(stream);
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// The value of an unlabelled sample `name` in Prometheus text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}
