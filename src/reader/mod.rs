//! The socket side: accepts boundary's connections on a Unix stream socket and hands
//! each connection's bytes, in order, to a [`ConnectionHandler`].
//!
//! Two backends read the bytes and differ only in how they arrive:
//! - io_uring (`uring.rs`): one thread per ring, multishot accept and multishot
//!   receive into a provided-buffer ring shared by every connection of the ring;
//! - epoll (`epoll.rs`): one current-thread tokio runtime per thread, reading into a
//!   per-thread scratch buffer only when a connection is readable.
//!
//! Both share the accept policy (`policy.rs`: connection limit, peer uid) and the
//! non-blocking read loop (`reads.rs`: reads at accept, epoll's reads, the
//! shutdown drain). `probe.rs` picks the backend, `listener.rs` binds, `lock.rs`
//! holds the lock file that makes the socket path ours.
//!
//! A running reader can be handed a new listening socket
//! ([`Reader::replace_listener`], when the socket file was deleted and the path is
//! bound again): each thread takes what is queued on its old listener and accepts
//! on the new one; open connections are not touched.
//! `tests/reader_cost.rs` measures what a connection costs under each backend.
//!
//! The handler runs on the reader threads: it must not block for long (a blocked
//! `data` holds up every connection of that thread, and shutdown's deadline).

mod bufring;
mod epoll;
mod listener;
mod lock;
mod policy;
mod probe;
mod reads;
mod sys;
mod uring;

use std::io;
use std::ops::ControlFlow;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

pub use listener::{bind, bind_if_free, describe};
pub use lock::{lock_path, PathLock};
pub use probe::FORCE_URING_ERRNO_ENV;

/// Why io_uring cannot be used here (the probe `--io auto` runs at start-up,
/// [`FORCE_URING_ERRNO_ENV`] included), or `None` when it can: for callers that must
/// know beforehand, such as tests that need the io_uring reader and skip without it.
pub fn uring_unavailable() -> Option<String> {
    probe::probe(None).err().map(|error| error.to_string())
}

/// Which reader the command line asks for (`--io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoMode {
    /// io_uring when the kernel allows it, else epoll.
    #[default]
    Auto,
    /// io_uring or a start-up error.
    Uring,
    /// epoll (through tokio), always available.
    Epoll,
}

impl IoMode {
    /// The command-line spelling: `auto`, `uring`, `epoll`.
    pub fn as_str(self) -> &'static str {
        match self {
            IoMode::Auto => "auto",
            IoMode::Uring => "uring",
            IoMode::Epoll => "epoll",
        }
    }
}

impl FromStr for IoMode {
    type Err = ReaderError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(IoMode::Auto),
            "uring" => Ok(IoMode::Uring),
            "epoll" => Ok(IoMode::Epoll),
            other => Err(ReaderError::InvalidIoMode(other.to_owned())),
        }
    }
}

/// The reader that actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Uring,
    Epoll,
}

impl Backend {
    /// A label for logs and metrics: `io_uring` or `epoll`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Uring => "io_uring",
            Backend::Epoll => "epoll",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the reader listens and whom it lets in.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// Where boundary connects; used by [`bind`] and in messages.
    pub socket_path: PathBuf,
    /// Permission bits of the socket file (default `0o600`).
    pub socket_mode: u32,
    /// Which backend to run.
    pub io: IoMode,
    /// Open connections allowed at once; more are accepted and closed at once
    /// ([`RejectReason::Limit`]). `0` refuses every connection.
    pub max_connections: usize,
    /// Peer uids (SO_PEERCRED) let in; empty lets in any peer.
    pub allow_uids: Vec<u32>,
    /// io_uring rings or epoll worker threads (default 1; 0 counts as 1).
    pub threads: usize,
    /// Testing hook: makes the io_uring probe fail with this errno, as a kernel
    /// that forbids io_uring would. [`FORCE_URING_ERRNO_ENV`] does the same.
    #[doc(hidden)]
    pub force_uring_errno: Option<i32>,
}

impl ReaderConfig {
    /// The defaults for a socket at `socket_path`.
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        ReaderConfig {
            socket_path: socket_path.into(),
            socket_mode: DEFAULT_SOCKET_MODE,
            io: IoMode::Auto,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            allow_uids: Vec::new(),
            threads: 1,
            force_uring_errno: None,
        }
    }
}

/// Default permission bits of the socket file.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;
/// Default for [`ReaderConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Who is on the other end of an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    /// Unique for the life of the process, in accept order per thread.
    pub id: u64,
    /// SO_PEERCRED uid, when the kernel gave one.
    pub peer_uid: Option<u32>,
    /// SO_PEERCRED pid, when the kernel gave one.
    pub peer_pid: Option<i32>,
}

/// Why an opened connection ended.
#[derive(Debug)]
pub enum CloseCause {
    /// The peer closed its end (every byte it sent was handed over).
    PeerEof,
    /// Reading failed.
    Error(io::Error),
    /// The handler returned `ControlFlow::Break`.
    Handler,
    /// The reader shut down; the bytes already waiting were handed over first.
    Shutdown,
}

/// The process at the other end of a rejected connection, as SO_PEERCRED gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Peer {
    /// Its uid, when the kernel gave one.
    pub uid: Option<u32>,
    /// Its pid, when the kernel gave one.
    pub pid: Option<i32>,
}

/// Why a connection was accepted and closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// `max_connections` were already open.
    Limit,
    /// `allow_uids` is set and the peer's uid is not in it.
    PeerUid,
}

impl RejectReason {
    /// The `reason` label of `connections_rejected_total`.
    pub fn as_label(self) -> &'static str {
        match self {
            RejectReason::Limit => "limit",
            RejectReason::PeerUid => "peer_uid",
        }
    }
}

/// What the reader calls; the lead plugs the codec and ring in here.
///
/// Calls for one connection come from one thread, in order: `open`, any number of
/// `data`, then `closed` exactly once. Different connections may be served by
/// different threads at once.
pub trait ConnectionHandler: Send + Sync + 'static {
    /// Per-connection state, owned by the reader between calls.
    type State: Send + 'static;
    /// A connection was accepted and allowed.
    fn open(&self, info: &ConnInfo) -> Self::State;
    /// The next bytes of the connection's stream. `Break` closes the connection now.
    fn data(&self, state: &mut Self::State, bytes: &[u8]) -> ControlFlow<()>;
    /// The connection ended; called exactly once for every `open`.
    fn closed(&self, state: Self::State, cause: CloseCause);
    /// A connection from `peer` was accepted and closed at once without `open`.
    fn rejected(&self, reason: RejectReason, peer: Peer);
}

/// Errors of the socket side.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("socket path {path}: {kind} is in the way; refusing to replace it (only a leftover socket is replaced)")]
    PathOccupied { path: PathBuf, kind: &'static str },
    #[error("socket path {path}: another process serves it (a process accepts connections on the socket there); refusing to replace it")]
    PathServed { path: PathBuf },
    #[error("socket path {path}: another process serves it (it holds the lock file {lock})")]
    PathLocked { path: PathBuf, lock: PathBuf },
    #[error("socket path {path}: its directory {dir} does not exist (the proxy creates the socket, not its directory)")]
    NoDirectory { path: PathBuf, dir: PathBuf },
    #[error("socket path {path}: cannot create files in its directory {dir}: {source} (the proxy creates the socket and its lock file there)")]
    DirectoryNotWritable {
        path: PathBuf,
        dir: PathBuf,
        source: io::Error,
    },
    #[error("socket lock file {path}: {step} failed: {source}")]
    Lock {
        path: PathBuf,
        step: &'static str,
        source: io::Error,
    },
    #[error("socket path {path}: cannot inspect it: {source}")]
    InspectPath { path: PathBuf, source: io::Error },
    #[error("socket path {path}: cannot remove the leftover socket: {source}")]
    RemoveLeftover { path: PathBuf, source: io::Error },
    #[error("socket path {path}: {reason}")]
    InvalidPath { path: PathBuf, reason: &'static str },
    #[error("socket mode {mode:#o} is not a permission mode (at most 0o7777)")]
    InvalidMode { mode: u32 },
    #[error("socket path {path}: {step} failed: {source}")]
    Bind {
        path: PathBuf,
        step: &'static str,
        source: io::Error,
    },
    #[error("--io {0:?}: expected auto, uring or epoll")]
    InvalidIoMode(String),
    #[error("io_uring is not usable ({step}): {source}")]
    UringUnavailable {
        step: &'static str,
        source: io::Error,
    },
    #[error("reader thread {thread}: set-up failed: {source}")]
    WorkerSetup { thread: String, source: io::Error },
    #[error("reader thread {thread} panicked")]
    WorkerPanicked { thread: String },
}

/// A running reader; [`Reader::shutdown`] stops it (dropping it stops it at once).
pub struct Reader {
    backend: Backend,
    listeners: Arc<Listeners>,
    workers: Vec<Worker>,
    stop: Arc<Stop>,
}

/// One started thread and how to wake it for shutdown, and for a new listener.
pub(crate) struct Worker {
    name: String,
    handle: JoinHandle<()>,
    wake: Box<dyn FnOnce() + Send>,
    rebind: Box<dyn Fn() + Send + Sync>,
}

/// The listener every worker should accept on, and its generation (bumped by each
/// [`Reader::replace_listener`]). A worker that finds a newer generation takes
/// the connections still queued on its old listener, then accepts on the new one.
pub(crate) struct Listeners {
    current: std::sync::Mutex<(u64, Arc<UnixListener>)>,
}

impl Listeners {
    fn new(listener: Arc<UnixListener>) -> Arc<Listeners> {
        Arc::new(Listeners {
            current: std::sync::Mutex::new((0, listener)),
        })
    }

    /// The generation and the listener to accept on now.
    pub(crate) fn current(&self) -> (u64, Arc<UnixListener>) {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        (current.0, current.1.clone())
    }

    fn replace(&self, listener: Arc<UnixListener>) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *current = (current.0 + 1, listener);
    }
}

/// The shutdown request shared with every worker thread.
pub(crate) struct Stop {
    deadline: OnceLock<Instant>,
}

impl Stop {
    fn new() -> Arc<Stop> {
        Arc::new(Stop {
            deadline: OnceLock::new(),
        })
    }

    /// Whether shutdown has begun (the wake-up may still be on its way).
    pub(crate) fn requested(&self) -> bool {
        self.deadline.get().is_some()
    }

    /// When the drain must be over; `now` if shutdown has not set one.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline.get().copied().unwrap_or_else(Instant::now)
    }
}

/// What a backend's `start` hands back.
pub(crate) struct Started {
    workers: Vec<Worker>,
}

/// Shared context for spawning a backend's threads.
pub(crate) struct StartArgs<H> {
    pub(crate) threads: usize,
    pub(crate) listener: Arc<UnixListener>,
    pub(crate) listeners: Arc<Listeners>,
    pub(crate) handler: Arc<H>,
    pub(crate) policy: Arc<policy::Admission>,
    pub(crate) stop: Arc<Stop>,
}

/// Picks the backend (see [`IoMode`]), spawns its threads and starts accepting on
/// `listener` (from [`bind`]). Returns once every thread is set up.
pub fn start<H: ConnectionHandler>(
    cfg: &ReaderConfig,
    listener: UnixListener,
    handler: Arc<H>,
) -> Result<Reader, ReaderError> {
    let backend = probe::choose_backend(cfg.io, cfg.force_uring_errno)?;
    // Non-blocking for tokio, and so that taking the queued connections at shutdown
    // never blocks; io_uring's accept waits by polling either way.
    listener
        .set_nonblocking(true)
        .map_err(|source| ReaderError::Bind {
            path: cfg.socket_path.clone(),
            step: "set O_NONBLOCK",
            source,
        })?;
    let mut stop = Stop::new();
    let listener = Arc::new(listener);
    let mut args = StartArgs {
        threads: cfg.threads.max(1),
        listeners: Listeners::new(listener.clone()),
        listener,
        handler,
        policy: Arc::new(policy::Admission::new(
            cfg.max_connections,
            cfg.allow_uids.clone(),
        )),
        stop: stop.clone(),
    };
    let (backend, started) = match backend {
        Backend::Epoll => (Backend::Epoll, epoll::start(&args)?),
        Backend::Uring => match uring::start(&args) {
            Ok(started) => (Backend::Uring, started),
            Err(err) if cfg.io == IoMode::Auto => {
                tracing::info!(backend = "epoll", reason = %err, "io_uring rings could not be set up; reading with epoll");
                // The abandoned rings consumed their stop signal: start afresh.
                stop = Stop::new();
                args.stop = stop.clone();
                (Backend::Epoll, epoll::start(&args)?)
            }
            Err(err) => return Err(err),
        },
    };
    Ok(Reader {
        backend,
        listeners: args.listeners,
        workers: started.workers,
        stop,
    })
}

impl Reader {
    /// The backend that runs.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Names of the threads this reader started (`blp-uring-N` or `blp-epoll-N`).
    pub fn thread_names(&self) -> Vec<String> {
        self.workers.iter().map(|w| w.name.clone()).collect()
    }

    /// Hands every worker a new listening socket (from [`bind`]) to accept on,
    /// after the socket file of the old one was deleted or replaced. Open
    /// connections are not touched; connections still queued on the old listener
    /// are accepted before it is closed. Returns once every worker was told (each
    /// switches at its next wake-up, promptly).
    pub fn replace_listener(&self, listener: UnixListener) -> Result<(), ReaderError> {
        listener
            .set_nonblocking(true)
            .map_err(|source| ReaderError::Bind {
                path: PathBuf::new(),
                step: "set O_NONBLOCK",
                source,
            })?;
        self.listeners.replace(Arc::new(listener));
        for worker in &self.workers {
            (worker.rebind)();
        }
        Ok(())
    }

    /// Stops accepting (new connects are refused), hands every open connection's
    /// already-waiting bytes to the handler and closes it (`CloseCause::Shutdown`),
    /// all bounded by `deadline`; then joins every thread the reader started.
    /// Connections still open at the deadline are closed without further reads.
    pub fn shutdown(mut self, deadline: Instant) -> Result<(), ReaderError> {
        self.stop_and_join(deadline)
    }

    fn stop_and_join(&mut self, deadline: Instant) -> Result<(), ReaderError> {
        if self.workers.is_empty() {
            return Ok(());
        }
        let _ = self.stop.deadline.set(deadline);
        stop_listening(&self.listeners.current().1);
        let mut result = Ok(());
        let workers = std::mem::take(&mut self.workers);
        let mut handles = Vec::with_capacity(workers.len());
        for worker in workers {
            (worker.wake)();
            handles.push((worker.name, worker.handle));
        }
        for (name, handle) in handles {
            if handle.join().is_err() && result.is_ok() {
                result = Err(ReaderError::WorkerPanicked { thread: name });
            }
        }
        result
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Err(err) = self.stop_and_join(Instant::now()) {
            tracing::error!(error = %err, "reader stopped with an error");
        }
    }
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("backend", &self.backend)
            .field("threads", &self.thread_names())
            .finish()
    }
}

/// Refuses new connects at once: a listening Unix socket shut down for reading
/// answers `connect` with ECONNREFUSED, while the connections already queued can
/// still be accepted (each worker takes them before it ends).
fn stop_listening(listener: &UnixListener) {
    if let Err(err) = sys::shutdown(listener.as_fd(), libc::SHUT_RD) {
        tracing::warn!(error = %err, "shutdown(SHUT_RD) of the listening socket failed");
    }
}

/// Spawns thread `name`, runs `setup` on it and waits for its result; on success the
/// thread goes on to run what `setup` returned.
pub(crate) fn spawn_worker<S, R>(
    name: String,
    setup: S,
    wake: Box<dyn FnOnce() + Send>,
    rebind: Box<dyn Fn() + Send + Sync>,
) -> Result<Worker, ReaderError>
where
    S: FnOnce() -> io::Result<R> + Send + 'static,
    R: FnOnce(),
{
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<()>>(1);
    let handle = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || match setup() {
            Ok(run) => {
                let _ = tx.send(Ok(()));
                run();
            }
            Err(err) => {
                let _ = tx.send(Err(err));
            }
        })
        .map_err(|source| ReaderError::WorkerSetup {
            thread: name.clone(),
            source,
        })?;
    let outcome = rx
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("the thread ended during set-up")));
    match outcome {
        Ok(()) => Ok(Worker {
            name,
            handle,
            wake,
            rebind,
        }),
        Err(source) => {
            let _ = handle.join();
            Err(ReaderError::WorkerSetup {
                thread: name,
                source,
            })
        }
    }
}

/// Stops and joins workers already started when a later one fails to set up; the
/// listener stays usable (a fallback backend may take it over).
pub(crate) fn abandon(workers: Vec<Worker>, stop: &Stop) {
    let _ = stop.deadline.set(Instant::now());
    for worker in workers {
        (worker.wake)();
        let _ = worker.handle.join();
    }
}
