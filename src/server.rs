//! The embeddable engine: binds the socket, runs the reader, owns the ring, and lends
//! the ring's consumer to `run_forwarder` (the embedding API the README shows).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, IoMode};
use crate::events::{InternalEvent, SocketBound, SocketLost, SocketReleased};
use crate::forwarder::{self, ForwarderConfig, ForwarderState, Limits};
use crate::intake::{Intake, QueuedFrame};
use crate::metrics::{Metrics, MetricsError};
use crate::reader::{self, Backend, PathLock, Reader, ReaderConfig, ReaderError};
use crate::reporter::Reporter;
use crate::ring::{self, RingHandle};
use crate::seqgap::SeqTracker;

/// How long after `call_timeout` the forwarder gives up on a call that has not ended
/// (DEADLINE_EXCEEDED, retried): later than the deadline the built-in reporters keep
/// themselves, so theirs, with its more precise reason, comes first.
pub const CALL_DEADLINE_GRACE: Duration = Duration::from_secs(1);

/// Errors of the server's lifecycle.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting the server runs with is out of range ([`Config::validate_engine`]).
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The metrics could not be registered (a registry that already has them).
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The socket could not be bound or served.
    #[error(transparent)]
    Reader(#[from] ReaderError),
    /// [`Server::start`] was called before.
    #[error("the server was already started")]
    AlreadyStarted,
    /// [`Server::close`] was called (or the last clone dropped).
    #[error("the server is closed")]
    Closed,
    /// Another [`Server::run_forwarder`] has not returned yet.
    #[error("a forwarder is already running")]
    ForwarderRunning,
    /// The forwarder could not start, or ended abnormally.
    #[error(transparent)]
    Forwarder(#[from] forwarder::ForwarderError),
    /// The disk spool could not be opened.
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
}

/// The proxy engine. Cheap to clone; every clone is the same server.
///
/// Dropping the last clone of a started server that was not closed closes it with no
/// time left to drain ([`Server::close`] with a deadline of now): what it still holds
/// is counted as dropped for shutdown, and the socket file removed. It blocks, as
/// `close` does, while the reader stops.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
    /// One per clone: the last one dropped closes a server left open. (The socket
    /// watcher holds `inner` for a moment at every check, so `inner`'s own count
    /// cannot tell.)
    handles: Arc<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if Arc::strong_count(&self.handles) > 1 {
            return;
        }
        let open = matches!(
            *self.inner.lifecycle(),
            Lifecycle::Started { .. } | Lifecycle::Draining { .. }
        );
        if open {
            tracing::warn!(
                "the server was dropped without close: closing it now; what it held is counted as dropped for shutdown"
            );
            self.close_by(Instant::now());
        }
    }
}

struct Inner {
    config: Config,
    metrics: Arc<Metrics>,
    intake: Arc<Intake>,
    ring: RingHandle<QueuedFrame>,
    lifecycle: Mutex<Lifecycle>,
    /// The forwarder's state while no forwarder runs, and what became of the last one.
    forwarder: Mutex<Slot>,
    forwarder_returned: Condvar,
    /// Notified (with `forwarder_returned`) when the state is back.
    state_back: tokio::sync::Notify,
    /// Fired by `close` to stop a running forwarder.
    closing: CancellationToken,
    /// The reporters' calls threads still running, which `close` waits for.
    call_threads: Arc<forwarder::CallThreads>,
    /// The socket watcher thread, while the reader runs.
    watch: Mutex<Option<Watch>>,
}

/// Least time `close` gives a reporter's calls thread to end after its forwarder
/// returned, even past the deadline: a thread with no call running ends at once.
const THREAD_END_GRACE: Duration = Duration::from_millis(100);

/// How often the running server checks that its socket file is still its own.
const SOCKET_CHECK: Duration = Duration::from_secs(1);

/// The thread that checks the socket file every [`SOCKET_CHECK`]; dropping the
/// sender stops it.
struct Watch {
    stop: std::sync::mpsc::Sender<()>,
    handle: std::thread::JoinHandle<()>,
}

enum Lifecycle {
    New,
    Started {
        reader: Reader,
        socket: BoundSocket,
    },
    /// Reader stopped and ring closed; the forwarder may still drain.
    Draining {
        socket: BoundSocket,
    },
    Closed,
}

/// The socket file we created, to remove it only if it is still ours, and the lock
/// on the path (`<socket>.lock`), held until then.
struct BoundSocket {
    path: PathBuf,
    dev: u64,
    ino: u64,
    lock: PathLock,
    /// False from when the file was found deleted or replaced until it is bound again.
    bound: bool,
}

impl BoundSocket {
    /// Removes the socket file if it is still ours, then releases the lock.
    fn remove(self) {
        self.remove_file();
        drop(self.lock);
    }

    /// What is at the path now, if it is not our socket: `None` while it is.
    fn lost(&self) -> Option<String> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if self.is_ours(&meta) => None,
            Ok(meta) => Some(format!(
                "replaced by {}",
                reader::describe(meta.file_type())
            )),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Some("deleted".into()),
            Err(error) => Some(format!("cannot be inspected: {error}")),
        }
    }

    fn is_ours(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.bound
            && meta.file_type().is_socket()
            && meta.dev() == self.dev
            && meta.ino() == self.ino
    }

    fn remove_file(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if self.is_ours(&meta) => {
                if let Err(error) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), %error, "could not remove the socket file");
                }
            }
            _ => {
                tracing::debug!(path = %self.path.display(), "socket file already gone or replaced; left alone")
            }
        }
    }
}

/// Where the forwarder's calls run: on its own task, or on the calls thread.
/// Where the forwarder's state is.
#[derive(Default)]
struct Slot {
    /// The state while no forwarder runs; `None` while one does.
    state: Option<ForwarderState>,
    /// A forwarder whose `run_forwarder` future was dropped is still winding down: the
    /// next `run_forwarder` waits for its state rather than finding none.
    winding_down: bool,
    /// A forwarder task ended without its state (it panicked, was dropped while it ran,
    /// or its `forwarder::run` failed): none will come back.
    lost: bool,
}

/// Held by `run_forwarder`'s future: dropped (the future finished or was dropped), it
/// stops the forwarder, and marks it winding down if its state is not back yet.
struct Abandon {
    inner: Arc<Inner>,
    stop: CancellationToken,
    returned: Arc<AtomicBool>,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        self.stop.cancel();
        let mut slot = self
            .inner
            .forwarder
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !self.returned.load(Ordering::Relaxed) {
            slot.winding_down = true;
        }
    }
}

/// Held by the forwarder's task: dropped when the task ends, however it ends, it puts
/// the state back (counting what it holds as `shutdown` drops if the server is
/// closing) and wakes whoever waits for it. A task that panicked has no state to
/// put back; the waiters are woken all the same.
struct HandBack {
    inner: Arc<Inner>,
    returned: Arc<AtomicBool>,
    state: Option<ForwarderState>,
}

impl Drop for HandBack {
    fn drop(&mut self) {
        let inner = &self.inner;
        let mut slot = inner.forwarder.lock().unwrap_or_else(|p| p.into_inner());
        match self.state.take() {
            Some(mut state) => {
                if inner.closing.is_cancelled() {
                    state.drop_remaining_for_shutdown(&inner.metrics);
                }
                slot.state = Some(state);
            }
            None => slot.lost = true,
        }
        self.returned.store(true, Ordering::Relaxed);
        slot.winding_down = false;
        drop(slot);
        inner.forwarder_returned.notify_all();
        inner.state_back.notify_waiters();
    }
}

enum Calls<R> {
    Direct(R),
    Isolated(forwarder::Isolated<R>),
}

impl Server {
    /// Builds the engine (ring, metrics on `registry`) without touching the socket.
    /// The settings it runs with are checked first ([`Config::validate_engine`]):
    /// `ServerError::Config` names the one out of range.
    pub fn new(config: Config, registry: &prometheus::Registry) -> Result<Self, ServerError> {
        config.validate_engine()?;
        let metrics = Metrics::new(registry)?;
        let (producer, consumer) = ring::ring(config.ring_capacity).map_err(|_| {
            ConfigError::invalid(
                "--ring-capacity",
                config.ring_capacity,
                "a power of two the ring takes",
            )
        })?;
        metrics.ring_capacity.set(config.ring_capacity as i64);
        let handle = consumer.handle();
        let mut state = ForwarderState::new(consumer);
        if let Some(dir) = &config.spool_dir {
            state = state.with_spool(open_spool(dir, &config, &metrics, registry)?);
        }
        let intake = Arc::new(Intake::new(
            producer,
            metrics.clone(),
            SeqTracker::default(),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                metrics,
                intake,
                ring: handle,
                lifecycle: Mutex::new(Lifecycle::New),
                forwarder: Mutex::new(Slot {
                    state: Some(state),
                    ..Slot::default()
                }),
                forwarder_returned: Condvar::new(),
                state_back: tokio::sync::Notify::new(),
                closing: CancellationToken::new(),
                call_threads: Arc::default(),
                watch: Mutex::new(None),
            }),
            handles: Arc::new(()),
        })
    }

    /// The metrics this server updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Where the socket is (or will be) bound.
    pub fn socket_path(&self) -> &Path {
        &self.inner.config.socket
    }

    /// Frames currently buffered in the ring.
    pub fn ring_len(&self) -> usize {
        self.inner.ring.len()
    }

    /// Binds the socket and starts the reader; returns at once with the backend in use.
    pub fn start(&self) -> Result<Backend, ServerError> {
        let mut lifecycle = self.inner.lifecycle();
        match *lifecycle {
            Lifecycle::New => {}
            Lifecycle::Closed => return Err(ServerError::Closed),
            _ => return Err(ServerError::AlreadyStarted),
        }
        let config = &self.inner.config;
        // Held before the path is looked at: two starts cannot both find a leftover.
        let lock = PathLock::acquire(&config.socket)?;
        let listener = reader::bind(&config.socket, config.socket_mode)?;
        let meta = std::fs::symlink_metadata(&config.socket).map_err(|source| {
            ServerError::Reader(ReaderError::InspectPath {
                path: config.socket.clone(),
                source,
            })
        })?;
        let socket = BoundSocket {
            path: config.socket.clone(),
            dev: meta.dev(),
            ino: meta.ino(),
            lock,
            bound: true,
        };
        let reader_config = ReaderConfig {
            io: match config.io {
                IoMode::Auto => reader::IoMode::Auto,
                IoMode::Uring => reader::IoMode::Uring,
                IoMode::Epoll => reader::IoMode::Epoll,
            },
            socket_mode: config.socket_mode,
            max_connections: config.max_connections,
            allow_uids: config.allow_uids.clone(),
            ..ReaderConfig::new(&config.socket)
        };
        let reader = match reader::start(&reader_config, listener, self.inner.intake.clone()) {
            Ok(reader) => reader,
            Err(error) => {
                socket.remove();
                return Err(error.into());
            }
        };
        let backend = reader.backend();
        SocketBound {
            path: &socket.path,
            again: false,
        }
        .emit(&self.inner.metrics);
        *lifecycle = Lifecycle::Started { reader, socket };
        drop(lifecycle);
        self.start_watch();
        Ok(backend)
    }

    /// Starts the thread that notices a deleted or replaced socket file and serves
    /// the path again once it is free (see [`Inner::check_socket`]).
    fn start_watch(&self) {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let inner = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("blp-socket-watch".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(SOCKET_CHECK)
                {
                    match inner.upgrade() {
                        Some(inner) => inner.check_socket(),
                        None => return,
                    }
                }
            });
        match spawned {
            Ok(handle) => {
                *self.inner.watch.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Watch { stop, handle })
            }
            Err(error) => tracing::error!(
                %error,
                "cannot start the socket watcher; a deleted socket file will not be noticed"
            ),
        }
    }

    fn stop_watch(&self) {
        let watch = self
            .inner
            .watch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(Watch { stop, handle }) = watch {
            drop(stop);
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }

    /// Drains the ring through `reporter` until `cancel` fires, `close` is called, or
    /// the ring is closed and empty. Can be called again with a new reporter after it
    /// returns; undelivered requests and the ring's contents are kept.
    ///
    /// The forwarder runs as a task of its own (on the caller's tokio runtime), which
    /// the returned future awaits. Dropping that future (a `select!`, a `timeout`)
    /// cancels the forwarder as `cancel` would: the task winds down, and what it held
    /// goes back to the server for the next `run_forwarder` or for `close` to count.
    /// Winding down needs the runtime running: a forwarder dropped with its runtime
    /// while it ran is lost (what it held is not counted, `close` logs an error, a
    /// later `run_forwarder` fails with `ForwarderError::Lost`, and every log received
    /// from then on is counted as dropped `forward_failed`).
    /// A call that panics fails as INTERNAL (its logs dropped as `forward_failed`), and
    /// a call that has not ended by `call_timeout` plus [`CALL_DEADLINE_GRACE`] is
    /// stopped and fails as DEADLINE_EXCEEDED, to be retried: a reporter need not keep
    /// a deadline of its own. One blocking its calls thread at its deadline is waited
    /// for to its end, and its own outcome counts.
    pub async fn run_forwarder<R: Reporter>(
        &self,
        cancel: CancellationToken,
        reporter: R,
    ) -> Result<(), ServerError> {
        let call_deadline = self
            .inner
            .config
            .call_timeout
            .saturating_add(CALL_DEADLINE_GRACE);
        // Calls run on their own thread, so a reporter that blocks cannot hold
        // up cancellation (the shutdown deadline); one whose calls never block is
        // called directly.
        let calls = if reporter.calls_may_block() {
            Calls::Isolated(
                forwarder::Isolated::new(reporter, &self.inner.call_threads, call_deadline)
                    .map_err(|e| {
                        ServerError::Forwarder(forwarder::ForwarderError::CallsThread(e))
                    })?,
            )
        } else {
            Calls::Direct(reporter)
        };
        let state = loop {
            // Made before the look at the slot: a state handed back after it wakes it.
            let back = self.inner.state_back.notified();
            {
                let mut slot = self
                    .inner
                    .forwarder
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if self.inner.closing.is_cancelled() {
                    return Err(ServerError::Closed);
                }
                if let Some(state) = slot.state.take() {
                    break state;
                }
                if slot.lost {
                    return Err(forwarder::ForwarderError::Lost.into());
                }
                if !slot.winding_down {
                    return Err(ServerError::ForwarderRunning);
                }
            }
            back.await;
        };
        let config = &self.inner.config;
        let forwarder_config = ForwarderConfig {
            limits: Limits {
                max_logs: config.max_logs_per_request() as usize,
                max_bytes: config.batch_max_bytes,
            },
            linger: config.batch_linger,
            retry_max_elapsed: config.retry_max_elapsed,
            stall_after: ForwarderConfig::stall_after(config.call_timeout),
            // An isolated call keeps its deadline itself (`Isolated::new`).
            call_deadline: matches!(calls, Calls::Direct(_)).then_some(call_deadline),
        };
        let stop = CancellationToken::new();
        let returned = Arc::new(AtomicBool::new(false));
        // Whatever ends this future, the forwarder stops and hands its state back.
        let _abandon = Abandon {
            inner: self.inner.clone(),
            stop: stop.clone(),
            returned: returned.clone(),
        };
        let inner = self.inner.clone();
        // Owned by the task from its creation: however the task ends, even dropped
        // before it first runs, the state (or what is left of it) goes back.
        let mut back = HandBack {
            inner: inner.clone(),
            returned,
            state: Some(state),
        };
        let task = tokio::spawn(async move {
            let state = back
                .state
                .take()
                .expect("the state until the forwarder runs");
            let watcher = {
                let (stop, closing) = (stop.clone(), inner.closing.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {},
                        _ = closing.cancelled() => {},
                        _ = stop.cancelled() => {},
                    }
                    stop.cancel();
                })
            };
            let metrics = inner.metrics.clone();
            let result = match &calls {
                Calls::Direct(reporter) => {
                    forwarder::run(state, forwarder_config, metrics, reporter, stop.clone()).await
                }
                Calls::Isolated(reporter) => {
                    forwarder::run(state, forwarder_config, metrics, reporter, stop.clone()).await
                }
            };
            stop.cancel();
            let _ = watcher.await;
            back.state = Some(result?);
            // Puts it back before the task's result reaches `run_forwarder`.
            drop(back);
            Ok(())
        });
        match task.await {
            Ok(result) => result,
            Err(error) => Err(forwarder::ForwarderError::TaskEnded(error.to_string()).into()),
        }
    }

    /// Stops accepting, reads what is already waiting on each connection (until
    /// `deadline`), closes them, and closes the ring to producers. A running
    /// forwarder then delivers what is buffered and returns once the ring is empty.
    /// Blocks until the reader's threads have ended.
    pub fn stop_intake(&self, deadline: Instant) {
        self.stop_watch();
        let mut lifecycle = self.inner.lifecycle();
        let previous = std::mem::replace(&mut *lifecycle, Lifecycle::Closed);
        *lifecycle = match previous {
            Lifecycle::Started { reader, socket } => {
                if let Err(error) = reader.shutdown(deadline) {
                    tracing::error!(%error, "stopping the reader");
                }
                SocketReleased.emit(&self.inner.metrics);
                Lifecycle::Draining { socket }
            }
            other => other,
        };
        self.inner.ring.close();
    }

    /// Stops everything: the reader (reading what is waiting, within the shutdown
    /// timeout), the ring, and a running forwarder; counts what is still buffered as
    /// dropped for shutdown; removes the socket file. Blocks until every thread the
    /// server started has ended; call it from a blocking context. A reporter call that
    /// blocks its thread (see [`Reporter::calls_may_block`]) is waited for until the
    /// shutdown timeout; if it still blocks then, `close` logs an error and returns, and
    /// that thread ends when the call does.
    pub fn close(&self) {
        self.close_by(Instant::now() + self.inner.config.shutdown_timeout);
    }

    /// [`Server::close`] within a shutdown that began earlier and ends at `deadline`.
    pub(crate) fn close_by(&self, deadline: Instant) {
        let timeout = self.inner.config.shutdown_timeout;
        self.stop_intake(deadline);
        self.inner.closing.cancel();
        {
            let slot = self
                .inner
                .forwarder
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let (mut slot, wait) = self
                .inner
                .forwarder_returned
                .wait_timeout_while(slot, timeout.max(Duration::from_secs(1)), |s| {
                    s.state.is_none() && !s.lost
                })
                .unwrap_or_else(|p| p.into_inner());
            match slot.state.as_mut() {
                Some(state) => state.drop_remaining_for_shutdown(&self.inner.metrics),
                None if wait.timed_out() => tracing::error!(
                    "the forwarder did not stop in time (its task needs its tokio runtime \
                     running to wind down); it counts its leftovers when it returns"
                ),
                None => {
                    tracing::error!("the forwarder ended abnormally: what it held was not counted")
                }
            }
        }
        // A reporter call blocking its thread keeps that thread after the forwarder
        // gave up on it; it ends when the call returns.
        let left = deadline.saturating_duration_since(Instant::now());
        if !self
            .inner
            .call_threads
            .wait_ended(left.max(THREAD_END_GRACE))
        {
            tracing::error!(
                "a reporter call still blocks its thread (blp-calls); the thread ends when the call returns"
            );
        }
        let mut lifecycle = self.inner.lifecycle();
        if let Lifecycle::Draining { socket } =
            std::mem::replace(&mut *lifecycle, Lifecycle::Closed)
        {
            socket.remove();
        }
    }
}

/// Opens and locks the spool directory, exports the spool's metrics and counts
/// what recovery found (docs/spool.md).
fn open_spool(
    dir: &Path,
    config: &Config,
    metrics: &Arc<Metrics>,
    registry: &prometheus::Registry,
) -> Result<forwarder::Spooler, ServerError> {
    use crate::config::SpoolFsync;
    use crate::events::{InternalEvent, SpoolRecovered};
    use crate::spool::{Fsync, Spool, SpoolConfig};
    let fsync = match config.spool_fsync {
        SpoolFsync::Always => Fsync::Always,
        SpoolFsync::Interval => Fsync::Interval,
    };
    if config.spool_max_bytes < config.batch_max_bytes as u64 {
        // Not refused: requests are mostly far below --batch-max-bytes; but the
        // operator should know that the largest ones cannot be spooled.
        tracing::warn!(
            spool_max_bytes = config.spool_max_bytes,
            batch_max_bytes = config.batch_max_bytes,
            "--spool-max-bytes is smaller than a request may be (--batch-max-bytes): a request larger than the room left in the spool waits in memory until the spool has room or is empty"
        );
    }
    let (spool, recovery) = Spool::open(SpoolConfig::new(dir, config.spool_max_bytes, fsync))?;
    metrics.register_spool(registry)?;
    SpoolRecovered { dir, recovery }.emit(metrics);
    let limits = Limits {
        max_logs: config.batch_max_logs as usize,
        max_bytes: config.batch_max_bytes,
    };
    Ok(forwarder::Spooler::new(spool, limits, metrics))
}

impl Inner {
    fn lifecycle(&self) -> std::sync::MutexGuard<'_, Lifecycle> {
        self.lifecycle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One look at the socket file (every [`SOCKET_CHECK`]): if it is no longer
    /// ours, count and log the loss; while lost, bind the path again as soon as
    /// nothing is there, and hand the new listener to the running reader. Whatever
    /// is at the path and is not ours is left alone.
    fn check_socket(&self) {
        let mut lifecycle = self.lifecycle();
        let Lifecycle::Started { reader, socket } = &mut *lifecycle else {
            return;
        };
        if !socket.lock.is_current() {
            // The lock file was deleted (a tmp cleaner): lock a new one, so that a
            // start that comes later still finds the path taken. If another
            // process got it first, the path is no longer ours to bind again.
            match PathLock::acquire(&socket.path) {
                Ok(lock) => socket.lock = lock,
                Err(error) => {
                    tracing::debug!(%error, "cannot lock the socket path again");
                    if !socket.bound {
                        return;
                    }
                }
            }
        }
        if socket.bound {
            let Some(what) = socket.lost() else {
                return;
            };
            SocketLost {
                path: &socket.path,
                what: &what,
            }
            .emit(&self.metrics);
            socket.bound = false;
        }
        if !socket.lock.is_current() {
            return;
        }
        let listener = match reader::bind_if_free(&socket.path, self.config.socket_mode) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::debug!(%error, "socket path not free yet");
                return;
            }
        };
        let meta = match std::fs::symlink_metadata(&socket.path) {
            Ok(meta) => meta,
            Err(error) => {
                tracing::warn!(%error, "the socket file bound again is gone already");
                return;
            }
        };
        if let Err(error) = reader.replace_listener(listener) {
            tracing::error!(%error, "cannot hand the new socket to the reader");
            let _ = std::fs::remove_file(&socket.path);
            return;
        }
        (socket.dev, socket.ino, socket.bound) = (meta.dev(), meta.ino(), true);
        SocketBound {
            path: &socket.path,
            again: true,
        }
        .emit(&self.metrics);
    }
}
