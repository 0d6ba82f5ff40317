//! Keeps the shutdown deadline whatever a reporter does: every call runs on a
//! thread of its own (`blp-calls`, a current-thread runtime), and the forwarder
//! only awaits its result. A reporter that blocks its thread inside a call (a
//! write to a pipe nobody reads, a synchronous client) then stalls that thread
//! only; the forwarder still sees its cancellation at the deadline, takes the
//! request back and the server counts it as a `shutdown` drop.
//!
//! Each request is counted once, by the forwarder: forwarded when a call's result
//! reached it, else (cancelled first) dropped. A call given up on is aborted; one
//! stuck in a blocking write cannot be, and its bytes may still reach the
//! destination before the process exits, counted as `shutdown` nonetheless.
//!
//! A call has a deadline of its own ([`Isolated::new`]'s `deadline`). A call that has
//! been awaiting since before it is not polled again and fails as DEADLINE_EXCEEDED,
//! to be retried. A call that ran at or after the deadline (inside a poll then,
//! blocking its thread: a write that does not return; or a poll of it ended after it)
//! is waited for to its end, however many more polls it takes, and its own outcome is
//! the call's: a retry sent beside it would queue behind it on the calls thread and
//! then deliver the same logs a second time (a stdout that paused would print them
//! twice). The call itself records this, so the awaiting side may look late.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::sync::{Arc, Condvar, Mutex};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::proto::agent::{ReportBoundaryLogsRequest, ReportBoundaryLogsResponse};
use crate::reporter::{EncodedRequest, Reporter};

/// The calls threads still running, so that the server's `close` can wait for them: a
/// thread ends once its reporter is dropped and the call it runs (if any) has returned.
#[derive(Debug, Default)]
pub struct CallThreads {
    live: Mutex<usize>,
    ended: Condvar,
    /// The threads started, joined by [`CallThreads::wait_ended`] once none counts
    /// as running: the count drops before the thread has exited.
    handles: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl CallThreads {
    /// Waits until no calls thread runs, or `timeout` has passed; true when none runs.
    pub fn wait_ended(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        while *live > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            live = self
                .ended
                .wait_timeout(live, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(live);
        // Each has let go of its count, its last step: only its exit is left.
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in handles {
            let _ = handle.join();
        }
        true
    }

    fn started(self: &Arc<Self>) -> LiveThread {
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        LiveThread(self.clone())
    }
}

/// Held by a calls thread while it runs; counts it ended when dropped (a panic too).
struct LiveThread(Arc<CallThreads>);

impl Drop for LiveThread {
    fn drop(&mut self) {
        *self.0.live.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.0.ended.notify_all();
    }
}

/// A reporter whose calls run on their own thread; see the module docs.
pub struct Isolated<R> {
    inner: Arc<R>,
    calls: tokio::runtime::Handle,
    /// Dropped with the reporter: ends the calls thread (if it is not stuck).
    _stop: oneshot::Sender<()>,
    /// Past this a call is aborted (see the module docs).
    deadline: Duration,
}

impl<R: Reporter> Isolated<R> {
    /// Starts the calls thread for `inner`, counted in `threads` while it runs; each
    /// call is aborted past `deadline` (see the module docs).
    pub fn new(inner: R, threads: &Arc<CallThreads>, deadline: Duration) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let calls = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let live = threads.started();
        let handle = std::thread::Builder::new()
            .name("blp-calls".into())
            .spawn(move || {
                let _live = live;
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Calls still running are dropped (cancelled) with the runtime.
                drop(runtime);
            })?;
        threads
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
        Ok(Self {
            inner: Arc::new(inner),
            calls,
            _stop: stop,
            deadline,
        })
    }

    /// Runs `call` on the calls thread; dropping the returned future aborts it.
    fn run<T, F>(&self, call: F) -> impl Future<Output = Result<T, tonic::Status>> + Send
    where
        T: Send + 'static,
        F: Future<Output = Result<T, tonic::Status>> + Send + 'static,
    {
        let phase = Arc::new(Mutex::new(Phase::Idle));
        let deadline = self.deadline;
        let deadline_at = tokio::time::Instant::now() + deadline;
        let expired = move || {
            tonic::Status::deadline_exceeded(format!(
                "the reporter's call did not end within {deadline:?}"
            ))
        };
        let guarded = Guarded {
            call: Box::pin(call),
            phase: phase.clone(),
            deadline: deadline_at.into_std(),
            expired,
        };
        let handle = AbortOnDrop(self.calls.spawn(guarded));
        async move {
            let mut handle = handle;
            let joined = match tokio::time::timeout_at(deadline_at, &mut handle.0).await {
                Ok(joined) => joined,
                Err(_) => {
                    let gave_up = {
                        let mut now = phase.lock().unwrap_or_else(|p| p.into_inner());
                        let awaiting = *now == Phase::Idle;
                        if awaiting {
                            *now = Phase::GaveUp;
                        }
                        awaiting
                    };
                    if gave_up {
                        // Awaiting since before the deadline: it is not polled again,
                        // and fails as expired.
                        return Err(expired());
                    }
                    // Inside a poll, or a poll of it ended at or after the deadline (it
                    // may have written, or finished): its own outcome counts, however
                    // long it takes.
                    (&mut handle.0).await
                }
            };
            match joined {
                Ok(result) => result,
                Err(error) => Err(tonic::Status::internal(format!(
                    "the reporter's call ended abnormally: {error}"
                ))),
            }
        }
    }
}

/// Where an isolated call is, as its deadline sees it. The awaiting side checks it
/// when it next runs, which may be well after the deadline: what matters is whether
/// the call ran at or after the deadline, not what it does at the moment of the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Awaiting (between polls) since before the deadline, or not started.
    Idle,
    /// Inside a poll: running, perhaps blocking its thread.
    Polling,
    /// A poll ended at or after the deadline, or the call finished: it is waited for.
    Committed,
    /// The deadline passed while it was awaiting: it is not polled again.
    GaveUp,
}

/// A call that records whether it is inside a poll, and that is not polled again once
/// its deadline gave up on it between polls: a call that had blocked its thread past
/// the deadline is then never abandoned halfway (a retry beside it would deliver its
/// logs a second time), and one that was only awaiting stops where it was.
struct Guarded<F, E> {
    call: std::pin::Pin<Box<F>>,
    phase: Arc<Mutex<Phase>>,
    deadline: std::time::Instant,
    expired: E,
}

impl<T, F, E> Future for Guarded<F, E>
where
    F: Future<Output = Result<T, tonic::Status>>,
    E: Fn() -> tonic::Status + Unpin,
{
    type Output = Result<T, tonic::Status>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        {
            let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
            match *phase {
                Phase::GaveUp => return std::task::Poll::Ready(Err((self.expired)())),
                Phase::Idle => *phase = Phase::Polling,
                Phase::Polling | Phase::Committed => {}
            }
        }
        let polled = self.call.as_mut().poll(cx);
        let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        if polled.is_ready() || std::time::Instant::now() >= self.deadline {
            *phase = Phase::Committed;
        } else if *phase == Phase::Polling {
            *phase = Phase::Idle;
        }
        drop(phase);
        polled
    }
}

/// Aborts the call when the forwarder stops waiting for it.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<R: Reporter> Reporter for Isolated<R> {
    fn report_boundary_logs(
        &self,
        request: ReportBoundaryLogsRequest,
    ) -> impl Future<Output = Result<ReportBoundaryLogsResponse, tonic::Status>> + Send {
        let inner = self.inner.clone();
        self.run(async move { inner.report_boundary_logs(request).await })
    }

    fn report_encoded(
        &self,
        request: EncodedRequest,
    ) -> impl Future<Output = Result<(), tonic::Status>> + Send {
        let inner = self.inner.clone();
        self.run(async move { inner.report_encoded(request).await })
    }
}

impl<R> std::fmt::Debug for Isolated<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Isolated").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// Blocks its thread inside every call until released.
    struct Blocking {
        release: Arc<AtomicBool>,
    }

    impl Reporter for Blocking {
        async fn report_boundary_logs(
            &self,
            _request: ReportBoundaryLogsRequest,
        ) -> Result<ReportBoundaryLogsResponse, tonic::Status> {
            while !self.release.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(ReportBoundaryLogsResponse {})
        }
    }

    /// Blocks its thread past the deadline (a write), counts the write, then awaits.
    struct WritesLateThenAwaits {
        writes: Arc<std::sync::atomic::AtomicU32>,
    }

    impl Reporter for WritesLateThenAwaits {
        async fn report_boundary_logs(
            &self,
            _request: ReportBoundaryLogsRequest,
        ) -> Result<ReportBoundaryLogsResponse, tonic::Status> {
            std::thread::sleep(Duration::from_millis(130));
            self.writes.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(ReportBoundaryLogsResponse {})
        }
    }

    /// The awaiting side may run late (its runtime busy): a call that wrote after the
    /// deadline and is awaiting again by then is still waited for, not given up on.
    #[tokio::test(flavor = "current_thread")]
    async fn a_call_that_wrote_after_its_deadline_is_waited_for_even_when_checked_late() {
        let writes = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let reporter = Isolated::new(
            WritesLateThenAwaits {
                writes: writes.clone(),
            },
            &Arc::new(CallThreads::default()),
            Duration::from_millis(100),
        )
        .unwrap();
        // Keeps this (the awaiting side's) runtime busy from 90 to 150 ms, past the
        // call's write at 130 ms.
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(90)).await;
            std::thread::sleep(Duration::from_millis(60));
        });
        let result = reporter
            .report_boundary_logs(ReportBoundaryLogsRequest::default())
            .await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(writes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_call_that_blocks_its_thread_can_still_be_given_up_on() {
        let release = Arc::new(AtomicBool::new(false));
        let reporter = Isolated::new(
            Blocking {
                release: release.clone(),
            },
            &Arc::new(CallThreads::default()),
            Duration::from_secs(3600),
        )
        .unwrap();
        // On a current-thread runtime, the blocking call would hang this test
        // if it ran here.
        let gave_up = tokio::time::timeout(
            Duration::from_millis(200),
            reporter.report_boundary_logs(ReportBoundaryLogsRequest::default()),
        )
        .await;
        assert!(gave_up.is_err(), "the call is still blocked");
        release.store(true, Ordering::Release);
        let done = tokio::time::timeout(
            Duration::from_secs(10),
            reporter.report_boundary_logs(ReportBoundaryLogsRequest::default()),
        )
        .await;
        assert!(matches!(done, Ok(Ok(_))), "{done:?}");
    }
}
