//! The epoll reader: each thread runs a current-thread tokio runtime that accepts
//! on the shared listener and runs one small task per connection. A task reads
//! only when its socket is readable, into the thread's scratch buffer, so an idle
//! connection costs its task and its epoll registration, no buffer.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::policy::Admission;
use super::reads::{
    admit_and_read, drain_queued, drain_waiting, read_waiting, Read, Reserve, SCRATCH_LEN,
};
use super::sys;
use super::{
    spawn_worker, CloseCause, ConnectionHandler, Listeners, ReaderError, StartArgs, Started, Stop,
};

/// Reads of a full scratch buffer before a busy connection lets others run.
const READS_PER_WAKE: usize = 4;
/// Connections accepted per readiness before the accept loop lets others run.
const ACCEPTS_PER_WAKE: usize = 64;
/// Pause after an accept failure such as EMFILE.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

thread_local! {
    /// The thread's read buffer, shared by all its connections (reads never await
    /// while holding it).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_LEN]);
}

/// Starts `args.threads` threads, each accepting on its own duplicate of the listener.
pub(crate) fn start<H: ConnectionHandler>(args: &StartArgs<H>) -> Result<Started, ReaderError> {
    let token = CancellationToken::new();
    let mut workers = Vec::with_capacity(args.threads);
    for index in 0..args.threads {
        let name = format!("blp-epoll-{index}");
        let listener = match args.listener.try_clone() {
            Ok(listener) => listener,
            Err(source) => {
                super::abandon(workers, &args.stop);
                return Err(ReaderError::WorkerSetup {
                    thread: name,
                    source,
                });
            }
        };
        let shared = Arc::new(Shared {
            handler: args.handler.clone(),
            policy: args.policy.clone(),
            stop: args.stop.clone(),
            token: token.clone(),
            live: AtomicUsize::new(0),
            all_closed: Notify::new(),
            listeners: args.listeners.clone(),
            rebind: Notify::new(),
        });
        let cancel = token.clone();
        let wake = Box::new(move || cancel.cancel());
        let rebind = {
            let shared = shared.clone();
            Box::new(move || shared.rebind.notify_one())
        };
        let setup = move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()?;
            let listener = {
                let _entered = runtime.enter();
                register(listener)?
            };
            Ok(move || {
                runtime.block_on(serve(listener, shared));
                // Tasks still running here (only past the deadline) are dropped;
                // their guards report `closed(Shutdown)`.
                drop(runtime);
            })
        };
        match spawn_worker(name, setup, wake, rebind) {
            Ok(worker) => workers.push(worker),
            Err(err) => {
                super::abandon(workers, &args.stop);
                return Err(err);
            }
        }
    }
    Ok(Started { workers })
}

/// Registers a socket this reader owns with the thread's reactor, for reading.
fn register<T: AsRawFd>(socket: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `socket` (an owned socket: UnixListener or OwnedFd) owns its open
    // descriptor, returns that same descriptor from `as_raw_fd` and keeps it open
    // until the AsyncFd, which takes ownership of it, drops it.
    unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }.map_err(io::Error::from)
}

/// What one thread's accept loop and connection tasks share.
struct Shared<H: ConnectionHandler> {
    handler: Arc<H>,
    policy: Arc<Admission>,
    stop: Arc<Stop>,
    token: CancellationToken,
    /// Connection tasks of this thread not yet ended.
    live: AtomicUsize,
    all_closed: Notify,
    /// Where to accept after [`Reader::replace_listener`](super::Reader::replace_listener).
    listeners: Arc<Listeners>,
    /// Notified when `listeners` has a new generation.
    rebind: Notify,
}

impl<H: ConnectionHandler> Shared<H> {
    async fn wait_all_closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.live.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Accepts until shutdown, then takes the queued connections and waits (up to the
/// deadline) for every connection task to drain.
async fn serve<H: ConnectionHandler>(listener: AsyncFd<UnixListener>, shared: Arc<Shared<H>>) {
    let mut listener = listener;
    let mut generation = 0;
    let mut reserve = Reserve::new();
    loop {
        tokio::select! {
            biased;
            () = shared.token.cancelled() => break,
            () = shared.rebind.notified() => {
                let (next_generation, next) = shared.listeners.current();
                if next_generation == generation {
                    continue;
                }
                match next.try_clone().and_then(register) {
                    Ok(next) => {
                        // Take what connected before the old socket file went.
                        while let Ok(false) = accept_some(listener.get_ref().as_fd(), &shared) {}
                        listener = next;
                        generation = next_generation;
                    }
                    Err(err) => tracing::error!(error = %err, "cannot accept on the new socket"),
                }
            }
            ready = listener.readable() => {
                let mut ready = match ready {
                    Ok(ready) => ready,
                    Err(err) => {
                        tracing::error!(error = %err, "listener readiness failed");
                        tokio::select! {
                            () = shared.token.cancelled() => break,
                            () = tokio::time::sleep(ACCEPT_RETRY) => continue,
                        }
                    }
                };
                match accept_some(listener.get_ref().as_fd(), &shared) {
                    Ok(true) => ready.clear_ready(),
                    // More are queued: let the connection tasks run first, so the
                    // ones whose peers already left give back their places under
                    // the limit before more are accepted.
                    Ok(false) => tokio::task::yield_now().await,
                    // EINVAL once the listener is shut down: stopping, not failing.
                    Err(_) if shared.stop.requested() => break,
                    Err(err) => {
                        crate::events::accept_failed(crate::events::Listener::Socket, &err);
                        tokio::select! {
                            () = shared.token.cancelled() => break,
                            () = tokio::time::sleep(ACCEPT_RETRY) => {}
                        }
                    }
                }
            }
        }
    }
    SCRATCH.with_borrow_mut(|scratch| {
        drain_queued(
            listener.get_ref().as_fd(),
            &shared.policy,
            &*shared.handler,
            scratch,
            shared.stop.deadline(),
            &mut reserve,
        )
    });
    let deadline = tokio::time::Instant::from_std(shared.stop.deadline());
    if tokio::time::timeout_at(deadline, shared.wait_all_closed())
        .await
        .is_err()
    {
        tracing::warn!(
            open = shared.live.load(Ordering::Acquire),
            "shutdown deadline passed; closing connections without reading more"
        );
    }
}

/// Accepts up to [`ACCEPTS_PER_WAKE`] connections; `Ok(true)` when the queue is empty.
fn accept_some<H: ConnectionHandler>(
    listener: BorrowedFd<'_>,
    shared: &Arc<Shared<H>>,
) -> io::Result<bool> {
    for _ in 0..ACCEPTS_PER_WAKE {
        let fd = match sys::accept(listener, libc::SOCK_NONBLOCK) {
            Ok(fd) => fd,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(err) if matches!(err.raw_os_error(), Some(libc::EINTR | libc::ECONNABORTED)) => {
                continue
            }
            Err(err) => return Err(err),
        };
        // A peer that connected, wrote and left while queued is handled and closed
        // now, so it does not hold a place under the limit while its task waits
        // for its first turn.
        let admitted = SCRATCH.with_borrow_mut(|scratch| {
            admit_and_read(&shared.policy, &*shared.handler, fd, scratch)
        });
        let Some((fd, state)) = admitted else {
            continue;
        };
        shared.live.fetch_add(1, Ordering::AcqRel);
        let guard = ConnGuard {
            shared: shared.clone(),
            state: Some(state),
        };
        match register(fd) {
            Ok(fd) => {
                tokio::spawn(connection(fd, guard));
            }
            Err(err) => guard.close(CloseCause::Error(err)),
        }
    }
    Ok(false)
}

/// An open connection's place and state. Closing gives the place under the limit
/// back, then reports `closed` exactly once: on `close`, or, if the task is
/// dropped first, on drop (as `Shutdown`).
struct ConnGuard<H: ConnectionHandler> {
    shared: Arc<Shared<H>>,
    state: Option<H::State>,
}

impl<H: ConnectionHandler> ConnGuard<H> {
    /// Call with the socket already closed.
    fn close(mut self, cause: CloseCause) {
        self.finish(cause);
    }

    fn finish(&mut self, cause: CloseCause) {
        if let Some(state) = self.state.take() {
            self.shared.policy.release();
            self.shared.handler.closed(state, cause);
            if self.shared.live.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.shared.all_closed.notify_waiters();
            }
        }
    }
}

impl<H: ConnectionHandler> Drop for ConnGuard<H> {
    fn drop(&mut self) {
        self.finish(CloseCause::Shutdown);
    }
}

/// One connection's task: hand over bytes as they arrive until EOF, an error, a
/// handler `Break`, or shutdown (which drains what is waiting first).
async fn connection<H: ConnectionHandler>(fd: AsyncFd<OwnedFd>, mut guard: ConnGuard<H>) {
    let cause = read_until_closed(&fd, &mut guard).await;
    drop(fd);
    guard.close(cause);
}

async fn read_until_closed<H: ConnectionHandler>(
    fd: &AsyncFd<OwnedFd>,
    guard: &mut ConnGuard<H>,
) -> CloseCause {
    let shared = &*guard.shared;
    let Some(state) = guard.state.as_mut() else {
        return CloseCause::Shutdown;
    };
    let cancelled = shared.token.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled => {
                return SCRATCH.with_borrow_mut(|scratch| {
                    drain_waiting(fd.get_ref().as_fd(), &*shared.handler, state, scratch, shared.stop.deadline())
                });
            }
            ready = fd.readable() => {
                let mut ready = match ready {
                    Ok(ready) => ready,
                    Err(err) => return CloseCause::Error(err),
                };
                match read_ready(fd.get_ref().as_fd(), &*shared.handler, state) {
                    Read::TookAll | Read::Empty => ready.clear_ready(),
                    Read::MayHaveMore => {}
                    Read::Closed(cause) => return cause,
                }
            }
        }
    }
}

fn read_ready<H: ConnectionHandler>(fd: BorrowedFd<'_>, handler: &H, state: &mut H::State) -> Read {
    SCRATCH.with_borrow_mut(|buf| read_waiting(fd, handler, state, buf, READS_PER_WAKE))
}
