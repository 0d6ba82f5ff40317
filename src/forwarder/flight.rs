//! Delivery: up to [`MAX_IN_FLIGHT`] requests are sent at once, as long as no two
//! of them share a connection or a session (so every connection's and session's
//! logs still arrive in order), each retried on its own until delivered or dropped.
//! A request the destination refuses for its size is split in two at a log boundary
//! and its parts are sent in order in its place, down to single logs; a request over
//! the size the destination was found to take is split before it is sent.
//!
//! One call at a time left both ends idle in turn: coderd decoding one request
//! while the proxy waited, the proxy encoding the next while coderd waited.
//!
//! With a disk spool the loop has a second mode, spooling: entered when a
//! request's retries run out on transient errors, or when the destination is
//! failing while the ring fills (or closes). Then every request in memory is
//! written to the spool in the order it was taken, every newer one queues behind
//! them on disk, and the spool's oldest records are replayed one replay at a time
//! (one request for each session among them, its records merged in order within the
//! limits, the requests one after another) until the spool is empty, so each session's order
//! holds across the outage. A request the spool has no room for (or cannot write)
//! waits in memory, and nothing newer is taken until a replay frees room: the ring
//! holds the rest, as it would without a spool (back-pressure; `buffer_full` only
//! when it overflows). Only at shutdown (the ring closed) is it counted `spool_full`.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::batch::{OrderKey, Outgoing};
use super::retry::Backoff;
use super::split::{self, Learned};
use super::spooling::{self, Peeked, Replay, Spooler};
use super::ForwarderConfig;
use crate::events::{
    ForwardAttemptFailed, ForwardDropReason, ForwardDropped, ForwardRefusedTooLarge,
    ForwardStalled, ForwardSucceeded, InternalEvent, RequestSplit,
};
use crate::intake::QueuedFrame;
use crate::metrics::Metrics;
use crate::reporter::grpc::{classify, Failure, Oversize};
use crate::reporter::{EncodedRequest, Reporter};
use crate::ring::RingHandle;

/// Requests in flight at once at most.
pub(super) const MAX_IN_FLIGHT: usize = 4;
/// How long a request the spool refused waits before it is tried again when no
/// replay ended meanwhile.
const REFUSED_RETRY: Duration = Duration::from_secs(1);
/// How often the loop syncs the spool while a spool is on.
const SPOOL_TICK: Duration = Duration::from_millis(50);
/// How often the loop looks at the ring's fill while the destination is failing
/// (a 4096-frame ring fills from half to full in no less than this at 400 k frames/s).
const BACKLOG_POLL: Duration = Duration::from_millis(5);

/// The drain thread's requests as the delivery loop takes them: one message a drain
/// pass, so the loop is woken once a pass rather than once a request (each wake-up a
/// futex call on the drain thread and a context switch here), then handed out one
/// at a time in the order they were built.
pub(super) struct Incoming {
    rx: mpsc::Receiver<Vec<Outgoing>>,
    pass: std::vec::IntoIter<Outgoing>,
}

impl Incoming {
    pub(super) fn new(rx: mpsc::Receiver<Vec<Outgoing>>) -> Self {
        Self {
            rx,
            pass: Vec::new().into_iter(),
        }
    }

    /// The next request if one is there now.
    pub(super) fn try_recv(&mut self) -> Result<Outgoing, mpsc::error::TryRecvError> {
        loop {
            if let Some(out) = self.pass.next() {
                return Ok(out);
            }
            self.pass = self.rx.try_recv()?.into_iter();
        }
    }

    /// The next request; `None` once the channel is closed and empty. Cancel safe: a
    /// pass is only taken in the poll that returns its first request.
    pub(super) async fn recv(&mut self) -> Option<Outgoing> {
        loop {
            if let Some(out) = self.pass.next() {
                return Some(out);
            }
            self.pass = self.rx.recv().await?.into_iter();
        }
    }

    /// Closes the channel; what was sent can still be received.
    pub(super) fn close(&mut self) {
        self.rx.close();
    }
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Every part delivered or dropped (and counted).
    Settled,
    /// Cancelled: the caller keeps what is left.
    Cancelled,
    /// Retries ran out on transient errors and a spool can take what is left
    /// (nothing counted).
    Exhausted,
}

/// One delivery: its place in the order requests were taken, what of its request
/// is left undelivered (in order; empty when settled), and how it ended.
type Delivery<'a> = Pin<Box<dyn Future<Output = (u64, Vec<Outgoing>, Outcome)> + Send + 'a>>;
/// One replay of a spooled record, and the token that stops it.
type ReplayDelivery<'a> = (
    Pin<Box<dyn Future<Output = (Replay, ReplayEnd)> + Send + 'a>>,
    CancellationToken,
);

/// How a replay ended.
#[derive(Debug, Clone)]
struct ReplayEnd {
    /// Logs settled (delivered or dropped) from the start of each request it sent,
    /// in order ([`Replay::outgoing`]); a request not sent is not listed.
    settled: Vec<u64>,
    /// Of them, logs delivered.
    delivered: u64,
}

/// The spool and the ring whose fill decides when the backlog moves to disk.
pub(super) struct SpoolLink<'s> {
    pub spooler: &'s mut Spooler,
    pub ring: &'s RingHandle<QueuedFrame>,
}

impl SpoolLink<'_> {
    /// The ring is half full, or closed (shutting down): while the destination
    /// fails, that is the moment to move the backlog to disk.
    fn backlog(&self) -> bool {
        self.ring.len() >= self.ring.capacity() / 2 || self.ring.is_closed()
    }
}

/// What every delivery shares.
struct Ctx<'a, R> {
    config: &'a ForwarderConfig,
    learned: &'a Learned,
    metrics: &'a Metrics,
    reporter: &'a R,
    /// Set while the destination's last answer was a transient error.
    failing: &'a AtomicBool,
    /// Notified when `failing` is set: the loop then starts watching the ring's fill,
    /// even while every delivery is still retrying and nothing else wakes it.
    began_failing: &'a Notify,
    /// Whether a request whose retries ran out goes to a spool.
    spooled: bool,
}

impl<R> Clone for Ctx<'_, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for Ctx<'_, R> {}

/// Delivers `pending`, then what arrives on `rx`, until `cancel` fires or `rx` is
/// closed and everything taken is settled (or spooled). Returns what is left
/// undelivered, in the order it was built (cancelled deliveries first).
#[allow(clippy::too_many_arguments)]
pub(super) async fn deliver_all<R: Reporter>(
    mut pending: VecDeque<Outgoing>,
    rx: &mut Incoming,
    config: &ForwarderConfig,
    learned: &Learned,
    metrics: &Metrics,
    reporter: &R,
    cancel: &CancellationToken,
    mut spool: Option<SpoolLink<'_>>,
) -> VecDeque<Outgoing> {
    let failing = AtomicBool::new(false);
    let began_failing = Notify::new();
    let ctx = Ctx {
        config,
        learned,
        metrics,
        reporter,
        failing: &failing,
        began_failing: &began_failing,
        spooled: spool.is_some(),
    };
    let mut flights: Vec<Delivery<'_>> = Vec::with_capacity(MAX_IN_FLIGHT);
    // What is in flight, for the conflict check.
    let mut in_flight: Vec<(u64, OrderKey)> = Vec::with_capacity(MAX_IN_FLIGHT);
    let mut next: Option<Outgoing> = None;
    let mut cancelled: Vec<(u64, Vec<Outgoing>)> = Vec::new();
    let mut exhausted: Vec<(u64, Vec<Outgoing>)> = Vec::new();
    let mut order = 0u64;
    let mut rx_open = true;
    // Cancels the direct deliveries when the loop switches to spooling.
    let mut flight_cancel = cancel.child_token();
    let mut spooling = spool.as_ref().is_some_and(|s| !s.spooler.is_empty());
    // While spooling: the spool refused `next` (no room, or a failed write) at this
    // time. It waits, and is tried again once a replay ended, or a second later (a
    // disk freed by someone else), or when the ring closes (then, refused again, it
    // is dropped). Once the spool is empty it is delivered directly.
    let mut refused_at: Option<Instant> = None;
    // When the refused request last left the empty spool for a direct delivery: it
    // leaves again at most once every REFUSED_RETRY, so that a destination that
    // fails at once (no retry budget) is not called in a hot loop. Cleared once it
    // is delivered.
    let mut bounced_at: Option<Instant> = None;
    // The place in the order of the refused request's direct delivery, until it
    // ends: meanwhile nothing moves to the spool (the switch would cancel that
    // delivery, and the spool would refuse it again). What runs out of retries
    // meanwhile waits in `exhausted` and nothing newer is taken: the ring holds the
    // rest, as without a spool, until the refused request is delivered or runs out.
    let mut direct_refused: Option<u64> = None;
    let mut replaying: Option<ReplayDelivery<'_>> = None;
    let mut tick = tokio::time::interval(SPOOL_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if let Some(link) = spool.as_mut() {
            // While spooling, a refused request is tried again a second later (room
            // freed by someone else) and at once when the ring closes (shutdown).
            if spooling
                && refused_at
                    .is_some_and(|at| at.elapsed() >= REFUSED_RETRY || link.ring.is_closed())
            {
                refused_at = None;
            }
            let failing_backlog = failing.load(Ordering::Relaxed) && link.backlog();
            if !spooling && direct_refused.is_none() && (!exhausted.is_empty() || failing_backlog) {
                // Everything in memory goes to the spool, in the order it was taken.
                flight_cancel.cancel();
                let mut to_spool = std::mem::take(&mut exhausted);
                while !flights.is_empty() {
                    let (done, left, _) = any(&mut flights).await;
                    to_spool.push((done, left));
                }
                in_flight.clear();
                to_spool.sort_by_key(|(o, _)| *o);
                // Ahead of everything not yet taken, oldest first: spooled below.
                if let Some(out) = next.take() {
                    pending.push_front(out);
                }
                for out in to_spool
                    .into_iter()
                    .rev()
                    .flat_map(|(_, left)| left.into_iter().rev())
                {
                    pending.push_front(out);
                }
                flight_cancel = cancel.child_token();
                spooling = true;
                // Retries ran out (or the backlog grew): the spool is tried afresh.
                (refused_at, direct_refused) = (None, None);
            }
            if spooling {
                // Newer requests queue behind the spooled ones, on disk; one the
                // spool refuses waits in memory, and nothing newer is taken.
                while refused_at.is_none() {
                    let out = match next.take().or_else(|| pending.pop_front()) {
                        Some(out) => out,
                        None if rx_open => match rx.try_recv() {
                            Ok(out) => out,
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => {
                                rx_open = false;
                                break;
                            }
                        },
                        None => break,
                    };
                    if link.spooler.try_append(&out, metrics) {
                        continue;
                    }
                    if link.ring.is_closed() {
                        // Shutting down: there is nowhere else for it.
                        spooling::dropped_full(&out, metrics);
                        continue;
                    }
                    next = Some(out);
                    refused_at = Some(Instant::now());
                }
                if replaying.is_none() && rx_open && !cancel.is_cancelled() {
                    match link.spooler.peek(metrics) {
                        Peeked::Record(record) => {
                            let stop = cancel.child_token();
                            replaying = Some((Box::pin(replay(record, ctx, stop.clone())), stop));
                        }
                        // Drained: back to delivering directly (a request the
                        // spool refused first).
                        Peeked::Empty => {
                            let held = next.is_some() && refused_at.is_some();
                            if !held {
                                spooling = false;
                            } else if bounced_at.is_none_or(|at| at.elapsed() >= REFUSED_RETRY) {
                                // It starts first, as `order` (nothing is in flight
                                // while spooling).
                                spooling = false;
                                refused_at = None;
                                bounced_at = Some(Instant::now());
                                direct_refused = Some(order);
                            }
                        }
                        // Unreadable for now: retried at the next tick.
                        Peeked::Later => {}
                    }
                }
            }
        }
        // Start whatever may start: in order, stopping at the first conflict; nothing
        // while a request that ran out waits to be spooled (it would be overtaken).
        while !spooling
            && flights.len() < MAX_IN_FLIGHT
            && exhausted.is_empty()
            && !cancel.is_cancelled()
        {
            if next.is_none() {
                next = pending.pop_front();
            }
            if next.is_none() && rx_open {
                match rx.try_recv() {
                    Ok(out) => next = Some(out),
                    Err(mpsc::error::TryRecvError::Empty) => {}
                    Err(mpsc::error::TryRecvError::Disconnected) => rx_open = false,
                }
            }
            let Some(out) = next.take() else { break };
            if in_flight.iter().any(|(_, f)| f.conflicts(&out.order)) {
                next = Some(out);
                break;
            }
            in_flight.push((order, out.order.clone()));
            flights.push(Box::pin(deliver_owned(
                order,
                out,
                ctx,
                flight_cancel.clone(),
            )));
            order += 1;
        }
        let settled = next.is_none() && pending.is_empty() && !rx_open;
        if settled && (spooling || (flights.is_empty() && exhausted.is_empty())) {
            // The drain thread ended (ring closed and empty) and all is settled or
            // on disk; a replay still running is stopped below (what it settled is
            // acknowledged, the rest of its record stays spooled).
            break;
        }
        let room = rx_open
            && next.is_none()
            && (spooling || (flights.len() < MAX_IN_FLIGHT && exhausted.is_empty()));
        let ticking = spool.as_ref().is_some_and(|s| s.spooler.needs_tick());
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            (done, left, outcome) = any(&mut flights), if !flights.is_empty() => {
                in_flight.retain(|(o, _)| *o != done);
                if direct_refused == Some(done) {
                    direct_refused = None;
                    if matches!(outcome, Outcome::Settled) {
                        bounced_at = None;
                    }
                }
                match outcome {
                    Outcome::Settled => {}
                    Outcome::Cancelled => cancelled.push((done, left)),
                    Outcome::Exhausted => exhausted.push((done, left)),
                }
            }
            (record, end) = poll_some(&mut replaying), if replaying.is_some() => {
                replaying = None;
                refused_at = None;
                if let Some(link) = spool.as_mut() {
                    replayed(link.spooler, &record, end, metrics);
                }
            }
            received = rx.recv(), if room => match received {
                Some(out) => next = Some(out),
                None => rx_open = false,
            },
            _ = tick.tick(), if ticking => {
                if let Some(link) = spool.as_mut() {
                    link.spooler.tick(metrics);
                }
            }
            // The refused request waits to leave the empty spool again (an async
            // block, as below: no timer made while the branch is off).
            () = async move {
                if let Some(at) = bounced_at {
                    tokio::time::sleep_until((at + REFUSED_RETRY).into()).await;
                }
            }, if spooling
                && replaying.is_none()
                && next.is_some()
                && refused_at.is_some()
                && bounced_at.is_some_and(|at| at.elapsed() < REFUSED_RETRY) => {}
            // An async block: the timer is only made (and the clock read) when polled.
            _ = async { tokio::time::sleep(BACKLOG_POLL).await },
                if ctx.spooled && !spooling && failing.load(Ordering::Relaxed) => {}
            // A delivery found the destination failing after this select began.
            () = began_failing.notified(),
                if ctx.spooled && !spooling && !failing.load(Ordering::Relaxed) => {}
        }
    }
    if let Some((mut running, stop)) = replaying.take() {
        // Stopped between or during its calls: it returns at once with what it settled.
        stop.cancel();
        let (record, end) = running.as_mut().await;
        if let Some(link) = spool.as_mut() {
            replayed(link.spooler, &record, end, metrics);
        }
    }

    // Cancelled: every delivery still running sees it and hands its request back.
    while !flights.is_empty() {
        let (done, left, _) = any(&mut flights).await;
        if !left.is_empty() {
            cancelled.push((done, left));
        }
    }
    cancelled.extend(exhausted);
    cancelled.sort_by_key(|(o, _)| *o);
    let mut left: VecDeque<Outgoing> = cancelled.into_iter().flat_map(|(_, out)| out).collect();
    left.extend(next);
    left.extend(pending);
    left
}

/// Waits for the first of `flights` to finish and removes it.
fn any<'f, 'a: 'f>(
    flights: &'f mut Vec<Delivery<'a>>,
) -> impl Future<Output = (u64, Vec<Outgoing>, Outcome)> + use<'f, 'a> {
    std::future::poll_fn(move |cx| {
        for i in 0..flights.len() {
            if let Poll::Ready(done) = flights[i].as_mut().poll(cx) {
                drop(flights.swap_remove(i));
                return Poll::Ready(done);
            }
        }
        Poll::Pending
    })
}

/// Waits for the replay in `slot` (pending forever when there is none).
fn poll_some<'f, 'a: 'f>(
    slot: &'f mut Option<ReplayDelivery<'a>>,
) -> impl Future<Output = (Replay, ReplayEnd)> + use<'f, 'a> {
    std::future::poll_fn(move |cx| match slot.as_mut() {
        Some((fut, _)) => fut.as_mut().poll(cx),
        None => Poll::Pending,
    })
}

/// Acknowledges what a replay settled: its records, or those before where it was
/// stopped.
fn replayed(spooler: &mut Spooler, record: &Replay, end: ReplayEnd, metrics: &Metrics) {
    spooler.settle(record, &end.settled, end.delivered, metrics);
}

async fn deliver_owned<R: Reporter>(
    order: u64,
    out: Outgoing,
    ctx: Ctx<'_, R>,
    cancel: CancellationToken,
) -> (u64, Vec<Outgoing>, Outcome) {
    let mut rng = fastrand::Rng::new();
    let budget = ctx.config.retry_max_elapsed;
    let (left, outcome, _) = deliver(out, ctx, budget, &cancel, &mut rng).await;
    (order, left, outcome)
}

/// Sends a replay's requests one after another (each split to the limits like any
/// request) until every part is delivered or refused for good; transient errors are
/// retried for as long as it takes, the records being safe on disk meanwhile.
/// Stopped by `stop`, it returns at once with what it settled before (the rest of
/// the records stays spooled).
async fn replay<R: Reporter>(
    record: Replay,
    ctx: Ctx<'_, R>,
    stop: CancellationToken,
) -> (Replay, ReplayEnd) {
    let mut rng = fastrand::Rng::new();
    let ctx = Ctx {
        spooled: false,
        ..ctx
    };
    let mut end = ReplayEnd {
        settled: Vec::new(),
        delivered: 0,
    };
    for out in record.outgoing() {
        let logs = u64::from(out.request.logs);
        let (left, outcome, delivered) = deliver(out, ctx, Duration::MAX, &stop, &mut rng).await;
        let unsettled: u64 = left.iter().map(|o| u64::from(o.request.logs)).sum();
        end.settled.push(logs - unsettled);
        end.delivered += delivered;
        if outcome != Outcome::Settled {
            break;
        }
    }
    (record, end)
}

/// Sends one request, or the parts it is split into, in order, until each is
/// delivered or dropped, retrying each for `budget`. Returns what is left (in
/// order; empty when everything was settled), how it ended, and the logs delivered.
async fn deliver<R: Reporter>(
    out: Outgoing,
    ctx: Ctx<'_, R>,
    budget: Duration,
    cancel: &CancellationToken,
    rng: &mut fastrand::Rng,
) -> (Vec<Outgoing>, Outcome, u64) {
    let Ctx {
        learned, metrics, ..
    } = ctx;
    let mut delivered = 0u64;
    // Parts still to send, the next one last.
    let mut parts = vec![out];
    while let Some(part) = parts.pop() {
        if let Some((head, rest)) = split::fit(&part, learned.limits()) {
            split_event(&part).emit(metrics);
            parts.push(rest);
            parts.push(head);
            continue;
        }
        match attempt(&part.request, ctx, budget, cancel, rng).await {
            Attempt::Delivered => delivered += u64::from(part.request.logs),
            Attempt::Dropped => {}
            Attempt::Cancelled => {
                parts.push(part);
                parts.reverse();
                return (parts, Outcome::Cancelled, delivered);
            }
            Attempt::Exhausted => {
                parts.push(part);
                parts.reverse();
                return (parts, Outcome::Exhausted, delivered);
            }
            Attempt::TooLarge {
                over,
                status,
                latency,
            } => {
                let halves = split::halves(&part, over);
                let limits = match &halves {
                    Some((a, b)) => learned.lower(split::limit_after_refusal(
                        &part,
                        over,
                        (a, b),
                        learned.limits(),
                    )),
                    None => learned.limits(),
                };
                ForwardRefusedTooLarge {
                    latency,
                    status: &status,
                    logs: u64::from(part.request.logs),
                    bytes: part.request.bytes.len() as u64,
                    max_logs: limits.max_logs,
                    max_bytes: limits.max_bytes,
                }
                .emit(metrics);
                match halves {
                    Some((a, b)) => {
                        split_event(&part).emit(metrics);
                        parts.push(b);
                        parts.push(a);
                    }
                    // A single log still too large: nothing smaller can be sent.
                    None => ForwardDropped {
                        frames: u64::from(part.request.frames),
                        logs: u64::from(part.request.logs),
                        reason: ForwardDropReason::ForwardFailed,
                    }
                    .emit(metrics),
                }
            }
        }
    }
    (Vec::new(), Outcome::Settled, delivered)
}

fn split_event(out: &Outgoing) -> RequestSplit {
    RequestSplit {
        logs: u64::from(out.request.logs),
        bytes: out.request.bytes.len() as u64,
    }
}

/// How sending one request ended.
enum Attempt {
    Delivered,
    /// Dropped and counted (refused for good, or retries ran out without a spool).
    Dropped,
    /// Cancelled: the caller keeps it.
    Cancelled,
    /// Retries ran out and a spool can take it; nothing counted.
    Exhausted,
    /// Refused for its size; nothing is counted yet (the caller splits it, or drops
    /// it when it cannot be split).
    TooLarge {
        over: Oversize,
        status: tonic::Status,
        latency: std::time::Duration,
    },
}

/// Marks the destination failing; the first time, wakes the loop to watch the ring.
fn mark_failing(failing: &AtomicBool, began_failing: &Notify) {
    if !failing.swap(true, Ordering::Relaxed) {
        began_failing.notify_one();
    }
}

/// Sends one request until it is delivered, dropped, refused for its size, out of
/// retries with a spool to take it, or cancelled.
async fn attempt<R: Reporter>(
    request: &EncodedRequest,
    ctx: Ctx<'_, R>,
    budget: Duration,
    cancel: &CancellationToken,
    rng: &mut fastrand::Rng,
) -> Attempt {
    let Ctx {
        metrics,
        reporter,
        failing,
        began_failing,
        ..
    } = ctx;
    let mut backoff = Backoff::new(budget);
    let first_started = tokio::time::Instant::now();
    loop {
        let started = Instant::now();
        // A panic inside the call is its failure, not the forwarder's; a call that
        // does not end by the deadline fails too, whatever the reporter keeps.
        let call = AssertUnwindSafe(reporter.report_encoded(request.clone())).catch_unwind();
        tokio::pin!(call);
        let deadline = async {
            match ctx.config.call_deadline {
                Some(after) => tokio::time::sleep(after).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        // With a spool, a call left unanswered marks the destination failing, as
        // an error would (a hung coderd answers nothing until the call timeout). An
        // async block: without a spool the timer is never made.
        let stall = async { tokio::time::sleep(ctx.config.stall_after).await };
        tokio::pin!(stall);
        let mut stalled = !ctx.spooled;
        let outcome = loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Attempt::Cancelled,
                outcome = &mut call => break outcome.unwrap_or_else(|panic| {
                    Err(Status::internal(format!(
                        "the reporter's call panicked: {}",
                        panic_message(&*panic)
                    )))
                }),
                () = &mut deadline => break Err(Status::deadline_exceeded(format!(
                    "the reporter's call did not end within {:?}",
                    ctx.config.call_deadline.unwrap_or_default()
                ))),
                () = &mut stall, if !stalled => {
                    stalled = true;
                    mark_failing(failing, began_failing);
                    ForwardStalled { after: ctx.config.stall_after }.emit(metrics);
                }
            }
        };
        let latency = started.elapsed();
        let status = match outcome {
            Ok(()) => {
                failing.store(false, Ordering::Relaxed);
                ForwardSucceeded {
                    frames: u64::from(request.frames),
                    logs: u64::from(request.logs),
                    latency,
                }
                .emit(metrics);
                return Attempt::Delivered;
            }
            Err(status) => status,
        };
        let failure = classify(&status);
        if failure != Failure::Retryable {
            // An answer, if a refusal: the destination is not failing (a replay's last
            // part refused for good must not leave the loop spooling what follows).
            failing.store(false, Ordering::Relaxed);
        }
        if let Failure::TooLarge(over) = failure {
            return Attempt::TooLarge {
                over,
                status,
                latency,
            };
        }
        let retryable = failure == Failure::Retryable;
        if retryable {
            mark_failing(failing, began_failing);
        }
        let pause = if retryable {
            backoff.next_pause(first_started.elapsed(), rng)
        } else {
            None
        };
        ForwardAttemptFailed {
            retryable,
            retrying: pause.is_some(),
            latency,
            status: &status,
        }
        .emit(metrics);
        let Some(pause) = pause else {
            if retryable && ctx.spooled {
                return Attempt::Exhausted;
            }
            ForwardDropped {
                frames: u64::from(request.frames),
                logs: u64::from(request.logs),
                reason: ForwardDropReason::ForwardFailed,
            }
            .emit(metrics);
            return Attempt::Dropped;
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Attempt::Cancelled,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// The text a panic was raised with, when it was a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use prometheus::Registry;

    use super::*;
    use crate::codec::LogFrame;
    use crate::forwarder::{coalesce, Limits};
    use crate::intake::QueuedFrame;
    use crate::metrics::{BatchDropReason, ForwardResult, LogDropReason};
    use crate::proto::agent::{ReportBoundaryLogsRequest, ReportBoundaryLogsResponse};
    use crate::workload;

    const WIDE: Limits = Limits {
        max_logs: 100_000,
        max_bytes: 4_194_303,
    };

    /// A destination that refuses what `refuse` says is too large, with that text.
    struct Picky {
        refuse: fn(&ReportBoundaryLogsRequest, usize) -> Option<tonic::Status>,
        accepted: Mutex<Vec<ReportBoundaryLogsRequest>>,
        refusals: Mutex<u32>,
    }

    impl Picky {
        fn new(refuse: fn(&ReportBoundaryLogsRequest, usize) -> Option<tonic::Status>) -> Self {
            Self {
                refuse,
                accepted: Mutex::default(),
                refusals: Mutex::default(),
            }
        }

        fn seqs(&self) -> Vec<i32> {
            let accepted = self.accepted.lock().unwrap();
            accepted
                .iter()
                .flat_map(|r| r.logs.iter().map(|l| l.sequence_number))
                .collect()
        }
    }

    impl Reporter for Picky {
        async fn report_boundary_logs(
            &self,
            request: ReportBoundaryLogsRequest,
        ) -> Result<ReportBoundaryLogsResponse, tonic::Status> {
            let len = prost::Message::encoded_len(&request);
            if let Some(status) = (self.refuse)(&request, len) {
                *self.refusals.lock().unwrap() += 1;
                return Err(status);
            }
            self.accepted.lock().unwrap().push(request);
            Ok(ReportBoundaryLogsResponse {})
        }
    }

    /// tonic's server with a 64 KiB receive limit.
    fn over_64k(_: &ReportBoundaryLogsRequest, len: usize) -> Option<tonic::Status> {
        (len > 65_536).then(|| {
            tonic::Status::out_of_range(format!(
                "Error, decoded message length too large: found {len} bytes, the limit is: 65536 bytes"
            ))
        })
    }

    /// coderd, but not saying its maximum.
    fn over_100_logs(request: &ReportBoundaryLogsRequest, _: usize) -> Option<tonic::Status> {
        (request.logs.len() > 100).then(|| {
            tonic::Status::unknown(format!("batch size {} exceeds maximum", request.logs.len()))
        })
    }

    /// No linger and no retry budget; no call counts as stalled.
    fn no_retries(limits: Limits) -> ForwarderConfig {
        ForwarderConfig {
            limits,
            linger: Duration::ZERO,
            retry_max_elapsed: Duration::ZERO,
            stall_after: Duration::from_secs(3600),
            call_deadline: None,
        }
    }

    /// Frames of session s1 on one connection, numbered on from `first_seq`.
    fn frames(count: i32, logs: usize, first_seq: i32) -> Vec<QueuedFrame> {
        (0..count)
            .map(|i| QueuedFrame {
                frame: LogFrame::from_request(&workload::request(
                    "s1",
                    "codex",
                    first_seq + i * logs as i32,
                    logs,
                ))
                .unwrap(),
                conn: 1,
                key_run: 0,
            })
            .collect()
    }

    async fn deliver_requests(
        requests: Vec<Outgoing>,
        reporter: &Picky,
        limits: Limits,
    ) -> (Arc<Metrics>, Learned) {
        let metrics = Metrics::new(&Registry::new()).unwrap();
        let config = no_retries(limits);
        let learned = Learned::new(limits);
        let (tx, rx) = mpsc::channel(1);
        drop(tx);
        let left = deliver_all(
            requests.into(),
            &mut Incoming::new(rx),
            &config,
            &learned,
            &metrics,
            reporter,
            &CancellationToken::new(),
            None,
        )
        .await;
        assert!(left.is_empty());
        (metrics, learned)
    }

    #[tokio::test]
    async fn a_request_refused_for_its_size_is_split_until_every_log_is_delivered_in_order() {
        // 40 frames of about 8 KiB coalesced into one request of over 300 KB.
        let frames = frames(40, 60, 0);
        let mut requests = Vec::new();
        coalesce(&frames, WIDE, &mut requests);
        assert_eq!(requests.len(), 1);
        let len = requests[0].request.bytes.len();
        assert!(len > 300_000, "{len} bytes");
        let reporter = Picky::new(over_64k);
        let (metrics, learned) = deliver_requests(requests, &reporter, WIDE).await;

        assert_eq!(reporter.seqs(), (0..40 * 60).collect::<Vec<_>>());
        assert_eq!(metrics.logs_forwarded.get(), 40 * 60);
        assert_eq!(metrics.batches_forwarded.get(), 40, "frames, each once");
        assert_eq!(metrics.logs_dropped_for(LogDropReason::ForwardFailed), 0);
        assert_eq!(learned.limits().max_bytes, 65_536, "the stated limit");
        assert_eq!(
            *reporter.refusals.lock().unwrap(),
            1,
            "once known, the limit is kept"
        );
        assert!(metrics.requests_split.get() >= 4);
        assert_eq!(
            metrics.forward_requests_for(ForwardResult::PermanentError),
            1
        );
    }

    #[tokio::test]
    async fn later_requests_are_cut_to_the_learned_limit_before_they_are_sent() {
        let frames = frames(10, 50, 0);
        let mut requests = Vec::new();
        coalesce(&frames[..5], WIDE, &mut requests);
        coalesce(&frames[5..], WIDE, &mut requests);
        assert_eq!(requests.len(), 2);
        let reporter = Picky::new(over_100_logs);
        let (metrics, learned) = deliver_requests(requests, &reporter, WIDE).await;

        assert_eq!(reporter.seqs(), (0..500).collect::<Vec<_>>());
        // 250 refused (limit now 125), the first 125 refused (limit now 63), then
        // everything else is cut to 63 logs before it is sent: no more refusals.
        let refusals = *reporter.refusals.lock().unwrap();
        assert_eq!(refusals, 2);
        assert!(learned.limits().max_logs <= 100);
        let accepted = reporter.accepted.lock().unwrap();
        assert!(accepted.iter().all(|r| r.logs.len() <= 100));
        assert_eq!(metrics.batches_forwarded.get(), 10);
        assert_eq!(metrics.accounting().forwarded, 500);
    }

    #[tokio::test]
    async fn a_single_log_still_refused_is_dropped_and_counted_once() {
        fn over_one_log(request: &ReportBoundaryLogsRequest, _: usize) -> Option<tonic::Status> {
            request
                .logs
                .iter()
                .any(|l| l.sequence_number == 3)
                .then(|| {
                    tonic::Status::resource_exhausted(
                        "grpc: received message larger than max (9000 vs. 8000)",
                    )
                })
        }
        let frames = frames(2, 5, 0);
        let mut requests = Vec::new();
        coalesce(&frames, WIDE, &mut requests);
        let reporter = Picky::new(over_one_log);
        let (metrics, _) = deliver_requests(requests, &reporter, WIDE).await;

        assert_eq!(reporter.seqs(), [0, 1, 2, 4, 5, 6, 7, 8, 9]);
        assert_eq!(metrics.logs_dropped_for(LogDropReason::ForwardFailed), 1);
        assert_eq!(metrics.logs_forwarded.get(), 9);
        // Frame 0 (logs 0..5) lost log 3 but its last log was delivered: forwarded.
        assert_eq!(metrics.batches_forwarded.get(), 2);
        assert_eq!(
            metrics.batches_dropped_for(BatchDropReason::ForwardFailed),
            0
        );
    }

    /// Refuses more than 150 logs (not saying its maximum) and never answers a request
    /// holding log 150 or later.
    struct StallsOnTheSecondHalf(Picky);

    impl Reporter for StallsOnTheSecondHalf {
        async fn report_boundary_logs(
            &self,
            request: ReportBoundaryLogsRequest,
        ) -> Result<ReportBoundaryLogsResponse, tonic::Status> {
            if request.logs.len() <= 150 && request.logs[0].sequence_number >= 150 {
                std::future::pending::<()>().await;
            }
            self.0.report_boundary_logs(request).await
        }
    }

    #[tokio::test]
    async fn cancelled_while_split_it_hands_back_the_parts_not_delivered_with_their_frames() {
        fn over_150_logs(request: &ReportBoundaryLogsRequest, _: usize) -> Option<tonic::Status> {
            (request.logs.len() > 150).then(|| {
                tonic::Status::unknown(format!("batch size {} exceeds maximum", request.logs.len()))
            })
        }
        let frames = frames(6, 50, 0);
        let mut requests = Vec::new();
        coalesce(&frames, WIDE, &mut requests);
        let reporter = StallsOnTheSecondHalf(Picky::new(over_150_logs));
        let metrics = Metrics::new(&Registry::new()).unwrap();
        let config = no_retries(WIDE);
        let learned = Learned::new(WIDE);
        let cancel = CancellationToken::new();
        let (_tx, rx) = mpsc::channel(1);
        let mut rx = Incoming::new(rx);
        let deliver = deliver_all(
            requests.into(),
            &mut rx,
            &config,
            &learned,
            &metrics,
            &reporter,
            &cancel,
            None,
        );
        let stop = cancel_once_forwarded(&metrics, 150, &cancel);
        let (left, ()) = tokio::join!(deliver, stop);

        assert_eq!(reporter.0.seqs(), (0..150).collect::<Vec<_>>());
        assert_eq!(metrics.batches_forwarded.get(), 3);
        let left: Vec<Outgoing> = left.into_iter().collect();
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].request.logs, left[0].request.frames), (150, 3));
        assert_eq!(left[0].frame_ends, [50, 100, 150]);
        assert_eq!(
            left[0].request.decode().unwrap().logs[0].sequence_number,
            150
        );
    }

    // ---- replays of the spool ------------------------------------------------------

    use crate::forwarder::spooling::Spooler;
    use crate::spool::{Fsync, Spool, SpoolConfig};

    /// A spooler on a new spool in `dir` holding `requests`, and its metrics.
    fn spooler_holding(dir: &std::path::Path, requests: &[Outgoing]) -> (Spooler, Arc<Metrics>) {
        let metrics = Metrics::new(&Registry::new()).unwrap();
        let (spool, _) = Spool::open(SpoolConfig::new(dir, 1 << 24, Fsync::Interval)).unwrap();
        let mut spooler = Spooler::new(spool, WIDE, &metrics);
        for out in requests {
            assert!(spooler.append(out, &metrics));
        }
        (spooler, metrics)
    }

    /// Cancels `cancel` 20 ms after `logs` logs have been forwarded (the next call is
    /// then in flight).
    async fn cancel_once_forwarded(metrics: &Metrics, logs: u64, cancel: &CancellationToken) {
        while metrics.logs_forwarded.get() < logs {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        cancel.cancel();
    }

    /// `deliver_all` of what arrives on `rx`, with `spooler` behind it: wide limits, no
    /// linger, no retry budget (a replay retries for as long as it takes).
    async fn deliver_spooled<R: Reporter>(
        spooler: &mut Spooler,
        metrics: &Metrics,
        reporter: &R,
        cancel: &CancellationToken,
        rx: mpsc::Receiver<Vec<Outgoing>>,
    ) -> VecDeque<Outgoing> {
        let (_producer, consumer) = crate::ring::ring::<QueuedFrame>(64).unwrap();
        let ring = consumer.handle();
        let config = no_retries(WIDE);
        let learned = Learned::new(WIDE);
        deliver_all(
            VecDeque::new(),
            &mut Incoming::new(rx),
            &config,
            &learned,
            metrics,
            reporter,
            cancel,
            Some(SpoolLink {
                spooler,
                ring: &ring,
            }),
        )
        .await
    }

    /// Records the sequence numbers it accepts, each call after `delay`. Refuses a
    /// call of more than `max_logs` as too large (as coderd does over its maximum),
    /// and never answers one whose first log is `hang_from` or later.
    struct Recorder {
        accepted: Mutex<Vec<i32>>,
        delay: Duration,
        max_logs: usize,
        hang_from: i32,
    }

    impl Default for Recorder {
        fn default() -> Self {
            Self {
                accepted: Mutex::default(),
                delay: Duration::ZERO,
                max_logs: usize::MAX,
                hang_from: i32::MAX,
            }
        }
    }

    impl Reporter for Recorder {
        async fn report_boundary_logs(
            &self,
            request: ReportBoundaryLogsRequest,
        ) -> Result<ReportBoundaryLogsResponse, tonic::Status> {
            if request.logs.len() > self.max_logs {
                return Err(tonic::Status::unknown(format!(
                    "batch size {} exceeds maximum",
                    request.logs.len()
                )));
            }
            if request.logs[0].sequence_number >= self.hang_from {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(self.delay).await;
            let mut accepted = self.accepted.lock().unwrap();
            accepted.extend(request.logs.iter().map(|l| l.sequence_number));
            Ok(ReportBoundaryLogsResponse {})
        }
    }

    #[tokio::test]
    async fn a_replay_stopped_after_part_of_its_record_was_delivered_resumes_after_that_part() {
        // One spooled record of 300 logs (6 frames of 50); the destination takes 150 a
        // call, so the replay sends it in two parts, and the stop comes while the
        // second is in its call.
        let mut requests = Vec::new();
        coalesce(&frames(6, 50, 0), WIDE, &mut requests);
        assert_eq!(requests.len(), 1);
        let dir = tempfile::tempdir().unwrap();
        let (mut spooler, metrics) = spooler_holding(dir.path(), &requests);
        let reporter = Recorder {
            max_logs: 150,
            hang_from: 150,
            ..Recorder::default()
        };
        let cancel = CancellationToken::new();
        let (_tx, rx) = mpsc::channel(1);
        let deliver = deliver_spooled(&mut spooler, &metrics, &reporter, &cancel, rx);
        let stop = cancel_once_forwarded(&metrics, 150, &cancel);
        let (left, ()) = tokio::join!(deliver, stop);
        assert!(left.is_empty());
        assert_eq!(
            *reporter.accepted.lock().unwrap(),
            (0..150).collect::<Vec<_>>()
        );
        // Logs 0..150 were delivered once and are no longer held: the books balance,
        // with 3 of the 6 frames on each side.
        assert_eq!(metrics.logs_forwarded.get(), 150);
        assert_eq!(metrics.spool.logs.get(), 150);
        assert_eq!(metrics.spool.frames.get(), 3);
        assert_eq!(metrics.spool.logs_replayed.get(), 150);
        let resume = |spooler: &mut Spooler, metrics: &Metrics| {
            let Peeked::Record(next) = spooler.peek(metrics) else {
                panic!("the record is still held");
            };
            let request = next.outgoing()[0].request.clone();
            let logs = request.decode().unwrap().logs;
            (logs[0].sequence_number, logs.len(), request.frames)
        };
        assert_eq!(resume(&mut spooler, &metrics), (150, 150, 3));
        // And after a restart, from the spool's files.
        drop(spooler);
        let (spool, recovery) =
            Spool::open(SpoolConfig::new(dir.path(), 1 << 24, Fsync::Interval)).unwrap();
        assert_eq!((recovery.intact.frames, recovery.intact.logs), (3, 150));
        let metrics = Metrics::new(&Registry::new()).unwrap();
        let mut spooler = Spooler::new(spool, WIDE, &metrics);
        assert_eq!(metrics.spool.logs.get(), 150);
        assert_eq!(resume(&mut spooler, &metrics), (150, 150, 3));
    }

    fn request_of(first: i32, logs: usize) -> Outgoing {
        let mut out = Vec::new();
        coalesce(&frames(1, logs, first), WIDE, &mut out);
        out.pop().unwrap()
    }

    #[tokio::test]
    async fn a_damaged_record_skipped_in_the_spool_does_not_let_newer_logs_overtake_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new(&Registry::new()).unwrap();
        let (mut spool, _) =
            Spool::open(SpoolConfig::new(dir.path(), 1 << 24, Fsync::Interval)).unwrap();
        // Intact by its CRC, but too short for the 4 frames it claims.
        spool.append_unsynced(4, 1, &[0u8; 3]).unwrap();
        let mut spooler = Spooler::new(spool, WIDE, &metrics);
        assert!(spooler.append(&request_of(0, 50), &metrics));
        let reporter = Recorder::default();
        let cancel = CancellationToken::new();
        let (tx, rx) = mpsc::channel(1);
        let deliver = deliver_spooled(&mut spooler, &metrics, &reporter, &cancel, rx);
        let feed = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.send(vec![request_of(50, 50)]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(tx);
        };
        let (left, ()) = tokio::join!(deliver, feed);
        assert!(left.is_empty());
        assert_eq!(
            *reporter.accepted.lock().unwrap(),
            (0..100).collect::<Vec<_>>(),
            "the spooled logs 0..50 first, then 50..100"
        );
        assert_eq!(metrics.logs_dropped_for(LogDropReason::SpoolCorrupt), 1);
        assert_eq!(metrics.spool.logs.get(), 0);
    }

    #[tokio::test]
    async fn a_record_whose_bytes_go_bad_while_its_replay_is_in_flight_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let (mut spooler, metrics) = spooler_holding(&path, &[request_of(0, 50)]);
        let reporter = Recorder {
            delay: Duration::from_millis(300),
            ..Recorder::default()
        };
        let cancel = CancellationToken::new();
        let (tx, rx) = mpsc::channel(1);
        let deliver = deliver_spooled(&mut spooler, &metrics, &reporter, &cancel, rx);
        let meddle = async {
            // The replay's call is in flight: the record's bytes go bad, then a tmp
            // cleaner deletes the directory, which the next tick makes again.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let segment = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|e| e == "seg"))
                .unwrap();
            let mut bytes = std::fs::read(&segment).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            std::fs::write(&segment, &bytes).unwrap();
            std::fs::remove_dir_all(&path).unwrap();
            tokio::time::sleep(Duration::from_millis(600)).await;
            drop(tx);
        };
        let (left, ()) = tokio::join!(deliver, meddle);
        assert!(left.is_empty());
        assert_eq!(
            *reporter.accepted.lock().unwrap(),
            (0..50).collect::<Vec<_>>()
        );
        assert_eq!(metrics.logs_forwarded.get(), 50);
        assert_eq!(metrics.logs_dropped_for(LogDropReason::SpoolCorrupt), 0);
        assert_eq!(metrics.spool.logs.get(), 0);
        assert_eq!(metrics.spool.logs_replayed.get(), 50);
    }

    /// One `attempt` of a request of 5 logs with `config` (its retry budget), the
    /// destination marked failing before if `failing`: how it ended, the metrics,
    /// and whether the destination is marked failing after.
    async fn attempt_once<R: Reporter>(
        reporter: &R,
        config: ForwarderConfig,
        failing: bool,
        spooled: bool,
    ) -> (Attempt, Arc<Metrics>, bool) {
        let metrics = Metrics::new(&Registry::new()).unwrap();
        let learned = Learned::new(WIDE);
        let (failing, began_failing) = (AtomicBool::new(failing), Notify::new());
        let ctx = Ctx {
            config: &config,
            learned: &learned,
            metrics: &metrics,
            reporter,
            failing: &failing,
            began_failing: &began_failing,
            spooled,
        };
        let out = request_of(0, 5);
        let attempt = attempt(
            &out.request,
            ctx,
            config.retry_max_elapsed,
            &CancellationToken::new(),
            &mut fastrand::Rng::with_seed(3),
        )
        .await;
        (attempt, metrics, failing.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn a_refusal_for_good_is_an_answer_and_clears_the_failing_mark() {
        let reporter = Picky::new(|_, _| Some(tonic::Status::permission_denied("no")));
        let (attempt, metrics, failing) =
            attempt_once(&reporter, no_retries(WIDE), true, true).await;
        assert!(matches!(attempt, Attempt::Dropped));
        assert!(!failing);
        assert_eq!(metrics.logs_dropped_for(LogDropReason::ForwardFailed), 5);
    }

    /// The retry budget is the time since the first attempt began, calls included: a
    /// destination that takes 300 ms to fail each call is not tried for 500 ms of
    /// pauses on top of the calls (before, five calls and 1.7 s for a 0.5 s budget).
    #[tokio::test]
    async fn the_retry_budget_counts_the_time_spent_in_calls_not_only_the_pauses() {
        struct SlowFailure(std::sync::atomic::AtomicU32);
        impl Reporter for SlowFailure {
            async fn report_boundary_logs(
                &self,
                _: ReportBoundaryLogsRequest,
            ) -> Result<ReportBoundaryLogsResponse, tonic::Status> {
                self.0.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(300)).await;
                Err(tonic::Status::unavailable("down"))
            }
        }
        let reporter = SlowFailure(Default::default());
        let budget = Duration::from_millis(500);
        let config = ForwarderConfig {
            retry_max_elapsed: budget,
            ..no_retries(WIDE)
        };
        let start = Instant::now();
        let (attempt, metrics, _) = attempt_once(&reporter, config, false, false).await;
        let took = start.elapsed();
        assert!(matches!(attempt, Attempt::Dropped));
        assert_eq!(metrics.logs_dropped_for(LogDropReason::ForwardFailed), 5);
        let calls = reporter.0.load(Ordering::Relaxed);
        // 300 ms, a pause of 50-150 ms, 300 ms: past the budget after the second call.
        assert_eq!(calls, 2, "took {took:?}");
        assert!(took < budget + Duration::from_millis(700), "took {took:?}");
    }

    /// `deliver_all` of `pending` beside a spool of `spool_bytes` (200 take no request
    /// of 50 logs) holding `spooled`, and a ring of 64 frames holding `ring_frames`,
    /// with wide limits and `config`; `drive` runs alongside with the sender of newer
    /// requests, the metrics and the token that must end the run. Returns what
    /// `deliver_all` handed back, the metrics, and what `drive` returned.
    #[allow(clippy::too_many_arguments)]
    async fn beside_a_spool<R, D, F, T>(
        spool_bytes: u64,
        spooled: &[Outgoing],
        ring_frames: i32,
        config: ForwarderConfig,
        learned: Learned,
        reporter: &R,
        pending: Vec<Outgoing>,
        drive: D,
    ) -> (VecDeque<Outgoing>, Arc<Metrics>, T)
    where
        R: Reporter,
        D: FnOnce(mpsc::Sender<Vec<Outgoing>>, Arc<Metrics>, CancellationToken) -> F,
        F: Future<Output = T>,
    {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new(&Registry::new()).unwrap();
        let config_spool = SpoolConfig::new(dir.path(), spool_bytes, Fsync::Interval);
        let (spool, _) = Spool::open(config_spool).unwrap();
        let mut spooler = Spooler::new(spool, WIDE, &metrics);
        for out in spooled {
            assert!(spooler.try_append(out, &metrics));
        }
        let (producer, consumer) = crate::ring::ring::<QueuedFrame>(64).unwrap();
        for f in frames(ring_frames, 1, 1000) {
            producer.push(f, 1).unwrap();
        }
        let ring = consumer.handle();
        let cancel = CancellationToken::new();
        // Kept open for the whole run: a closed channel would end it early.
        let (tx, rx) = mpsc::channel::<Vec<Outgoing>>(64);
        let mut rx = Incoming::new(rx);
        let deliver = deliver_all(
            pending.into(),
            &mut rx,
            &config,
            &learned,
            &metrics,
            reporter,
            &cancel,
            Some(SpoolLink {
                spooler: &mut spooler,
                ring: &ring,
            }),
        );
        let driven = drive(tx.clone(), metrics.clone(), cancel.clone());
        let (left, out) = tokio::join!(deliver, driven);
        (left, metrics, out)
    }

    /// [`beside_a_spool`] of the case most tests share: one request of 50 logs that
    /// an empty 200-byte spool refuses, wide limits learned, and
    /// `ring_frames` frames in the ring.
    async fn refused_request<R, D, F, T>(
        ring_frames: i32,
        config: ForwarderConfig,
        reporter: &R,
        drive: D,
    ) -> (VecDeque<Outgoing>, Arc<Metrics>, T)
    where
        R: Reporter,
        D: FnOnce(mpsc::Sender<Vec<Outgoing>>, Arc<Metrics>, CancellationToken) -> F,
        F: Future<Output = T>,
    {
        let pending = vec![request_of(0, 50)];
        let learned = Learned::new(WIDE);
        beside_a_spool(
            200,
            &[],
            ring_frames,
            config,
            learned,
            reporter,
            pending,
            drive,
        )
        .await
    }

    /// Refuses the first call as a transient error (coderd down), then answers each
    /// call after `delay`.
    struct DownThenSlow {
        calls: std::sync::atomic::AtomicU32,
        delay: Duration,
    }

    impl Reporter for DownThenSlow {
        async fn report_boundary_logs(
            &self,
            _request: ReportBoundaryLogsRequest,
        ) -> Result<ReportBoundaryLogsResponse, tonic::Status> {
            if self.calls.fetch_add(1, Ordering::Relaxed) == 0 {
                return Err(tonic::Status::unavailable("coderd down"));
            }
            tokio::time::sleep(self.delay).await;
            Ok(ReportBoundaryLogsResponse {})
        }
    }

    #[tokio::test]
    async fn a_request_an_empty_spool_refuses_is_delivered_once_coderd_answers_with_the_ring_half_full(
    ) {
        // The spool (200 bytes) takes no request; the ring is half full and coderd
        // failing, which would move the backlog to the spool: the request the spool
        // refused is delivered directly, not cancelled and retried in a loop.
        let reporter = DownThenSlow {
            calls: Default::default(),
            delay: Duration::from_millis(20),
        };
        let run = refused_request(
            32,
            no_retries(WIDE),
            &reporter,
            |_, metrics, cancel| async move {
                while metrics.logs_forwarded.get() < 50 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                cancel.cancel();
            },
        );
        let calls = || reporter.calls.load(Ordering::Relaxed);
        let Ok((_, metrics, ())) = tokio::time::timeout(Duration::from_secs(5), run).await else {
            panic!(
                "not delivered in 5 s though coderd answers in 20 ms ({} calls)",
                calls()
            );
        };
        assert_eq!(metrics.logs_forwarded.get(), 50);
    }

    /// Fails every call as a transient error after yielding once (a real call awaits
    /// a socket).
    #[derive(Default)]
    struct AlwaysDown {
        calls: std::sync::atomic::AtomicU32,
    }

    impl Reporter for AlwaysDown {
        async fn report_boundary_logs(
            &self,
            _request: ReportBoundaryLogsRequest,
        ) -> Result<ReportBoundaryLogsResponse, tonic::Status> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
            Err(tonic::Status::unavailable("connection refused"))
        }
    }

    #[tokio::test]
    async fn a_request_an_empty_spool_refuses_is_not_retried_in_a_hot_loop_while_coderd_is_down() {
        // No retry budget, a spool too small for the request, coderd down: each direct
        // attempt runs out at once and the spool refuses it again; the request must
        // wait between rounds, not call coderd as fast as the loop turns.
        let reporter = AlwaysDown::default();
        let run = refused_request(0, no_retries(WIDE), &reporter, |_, _, cancel| async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            cancel.cancel();
        });
        let ran = tokio::time::timeout(Duration::from_secs(10), run).await;
        let calls = reporter.calls.load(Ordering::Relaxed);
        let (left, ..) = ran.unwrap_or_else(|_| panic!("never yielded ({calls} calls)"));
        assert_eq!(left.len(), 1, "handed back, not dropped");
        assert!(calls <= 4, "{calls} calls to a down coderd in 1.5 s");
    }

    // ---- a request the spool refused, delivered directly ------------------------------

    /// Answers the first `ok` calls, then fails every call as a transient error.
    struct UpThenDown {
        ok: u32,
        calls: std::sync::atomic::AtomicU32,
    }

    impl Reporter for UpThenDown {
        async fn report_boundary_logs(
            &self,
            _request: ReportBoundaryLogsRequest,
        ) -> Result<ReportBoundaryLogsResponse, tonic::Status> {
            let n = self.calls.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
            if n < self.ok {
                Ok(ReportBoundaryLogsResponse {})
            } else {
                Err(tonic::Status::unavailable("coderd down"))
            }
        }
    }

    /// CPU time (user + system) this thread has used.
    fn thread_cpu() -> Duration {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }

    #[tokio::test]
    async fn a_replay_after_a_refused_request_left_the_empty_spool_does_not_spin_the_loop() {
        // W (5 logs) is spooled; X (2 frames of 25 logs) is larger than the spool, its
        // halves are not. The destination takes 25 logs a call (learned), answers W's
        // replay, then is down. X: refused by the spool, bounced to a direct delivery
        // (bounced_at set), split, runs out, its first half spooled and replayed
        // (retried for as long as coderd is down): the loop must sleep meanwhile.
        let w = request_of(0, 5);
        let mut xs = Vec::new();
        coalesce(&frames(2, 25, 100), WIDE, &mut xs);
        assert_eq!(xs.len(), 1);
        let x = xs.pop().unwrap();
        let len = |o: &Outgoing| (48 + 4 * o.frame_ends.len() + o.request.bytes.len()) as u64;
        let reporter = UpThenDown {
            ok: 1,
            calls: Default::default(),
        };
        let learned = Learned::new(Limits {
            max_logs: 25,
            ..WIDE
        });
        let (_, _, used) = beside_a_spool(
            len(&x) - 1,
            &[w],
            0,
            no_retries(WIDE),
            learned,
            &reporter,
            vec![x],
            |_, _, cancel| async move {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let before = thread_cpu();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let used = thread_cpu() - before;
                cancel.cancel();
                used
            },
        )
        .await;
        let calls = reporter.calls.load(Ordering::Relaxed);
        assert!(
            used < Duration::from_millis(300),
            "the loop used {used:?} of CPU in 1.5 s while coderd was down ({calls} calls)"
        );
    }

    /// One request of session s2 on connection 2 with one log numbered `seq`.
    fn s2_request(seq: i32) -> Outgoing {
        let frame = QueuedFrame {
            frame: LogFrame::from_request(&workload::request("s2", "codex", seq, 1)).unwrap(),
            conn: 2,
            key_run: 0,
        };
        let mut out = Vec::new();
        coalesce(&[frame], WIDE, &mut out);
        out.pop().unwrap()
    }

    /// Until s1's request is answered or `limit` passes, looks every `every`, and
    /// each time (if `send`) offers one more request of session s2. One that finds
    /// the channel full is skipped: the loop may hold newer requests back, and the
    /// wait must still end.
    async fn s2_until_s1_answered(
        tx: &mpsc::Sender<Vec<Outgoing>>,
        s1_done: &std::sync::atomic::AtomicU32,
        limit: Duration,
        send: bool,
        every: Duration,
    ) {
        let start = Instant::now();
        let mut seq = 0;
        while start.elapsed() < limit && s1_done.load(Ordering::Relaxed) == 0 {
            if send {
                let _ = tx.try_send(vec![s2_request(seq)]);
                seq += 1;
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Which calls of sessions other than s1 fail as a transient error (one replica
    /// of two down); the rest are answered in 1 ms.
    #[derive(Default, Clone, Copy, PartialEq)]
    enum OthersFail {
        #[default]
        Never,
        /// Those whose first log has an odd sequence number.
        OddSequence,
        /// Every other call.
        EveryOtherCall,
    }

    /// Answers session s1's calls after 50 ms; the others' as `others` says.
    #[derive(Default)]
    struct SlowForS1 {
        others: OthersFail,
        s1_calls: std::sync::atomic::AtomicU32,
        s1_done: std::sync::atomic::AtomicU32,
        other_calls: std::sync::atomic::AtomicU32,
    }

    impl Reporter for SlowForS1 {
        async fn report_boundary_logs(
            &self,
            request: ReportBoundaryLogsRequest,
        ) -> Result<ReportBoundaryLogsResponse, tonic::Status> {
            if request.session_id == "s1" {
                self.s1_calls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.s1_done.fetch_add(1, Ordering::Relaxed);
                return Ok(ReportBoundaryLogsResponse {});
            }
            let n = self.other_calls.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(1)).await;
            let fails = match self.others {
                OthersFail::Never => false,
                OthersFail::OddSequence => request.logs[0].sequence_number % 2 == 1,
                OthersFail::EveryOtherCall => n % 2 == 1,
            };
            if fails {
                return Err(tonic::Status::unavailable("one replica down"));
            }
            Ok(ReportBoundaryLogsResponse {})
        }
    }

    async fn big_request_with_other_sessions(
        others: bool,
        every: u64,
        flaky: bool,
    ) -> (u32, u32, u64) {
        // coderd answers everything; s1's 50-log request (larger than the 200-byte
        // spool) in 50 ms, longer than stall_after (30 ms); the ring is half full.
        let reporter = SlowForS1 {
            others: if flaky {
                OthersFail::OddSequence
            } else {
                OthersFail::Never
            },
            ..Default::default()
        };
        let config = ForwarderConfig {
            stall_after: Duration::from_millis(30),
            call_deadline: None,
            retry_max_elapsed: Duration::from_secs(30),
            ..no_retries(WIDE)
        };
        let s1_done = &reporter.s1_done;
        let (_, metrics, ()) = refused_request(32, config, &reporter, |tx, _, cancel| async move {
            let every = Duration::from_millis(every);
            s2_until_s1_answered(&tx, s1_done, Duration::from_secs(3), others, every).await;
            cancel.cancel();
        })
        .await;
        (
            reporter.s1_calls.load(Ordering::Relaxed),
            reporter.s1_done.load(Ordering::Relaxed),
            metrics.logs_forwarded.get(),
        )
    }

    #[tokio::test]
    async fn a_request_the_spool_refused_alone_is_delivered_directly() {
        let (calls, done, _) = big_request_with_other_sessions(false, 5, false).await;
        eprintln!("alone: {calls} s1 calls, {done} answered");
        assert_eq!(done, 1);
    }

    #[tokio::test]
    async fn other_sessions_delivering_do_not_cancel_a_request_the_spool_refused_again_and_again() {
        let (calls, done, fwd) = big_request_with_other_sessions(true, 20, false).await;
        eprintln!("with s2: {calls} s1 calls, {done} answered, {fwd} logs forwarded");
        assert_eq!(done, 1);
        assert!(
            calls <= 3,
            "s1's request cancelled {} times though coderd answered every call",
            calls - 1
        );
    }

    #[tokio::test]
    async fn a_flaky_other_session_does_not_starve_a_request_the_spool_refused() {
        let (calls, done, fwd) = big_request_with_other_sessions(true, 5, true).await;
        eprintln!("flaky s2: {calls} s1 calls, {done} answered, {fwd} logs forwarded");
        assert_eq!(
            done, 1,
            "s1's request, answered in 50 ms, not delivered in 3 s: {calls} calls cancelled"
        );
    }

    #[tokio::test]
    async fn another_sessions_exhausted_request_does_not_cancel_a_request_the_spool_refused_again_and_again(
    ) {
        // No retry budget: each transient error of s2 ends its delivery as run out,
        // which moves the backlog to the spool; that must wait for the direct
        // delivery of s1's request (which the 200-byte spool refused), not cancel it.
        let reporter = SlowForS1 {
            others: OthersFail::EveryOtherCall,
            ..Default::default()
        };
        let s1_done = &reporter.s1_done;
        refused_request(0, no_retries(WIDE), &reporter, |tx, _, cancel| async move {
            let (limit, every) = (Duration::from_secs(4), Duration::from_millis(5));
            s2_until_s1_answered(&tx, s1_done, limit, true, every).await;
            cancel.cancel();
        })
        .await;
        let calls = reporter.s1_calls.load(Ordering::Relaxed);
        assert_eq!(
            reporter.s1_done.load(Ordering::Relaxed),
            1,
            "s1's request (answered in 50 ms) cancelled {calls} times in 4 s, never delivered"
        );
        assert!(calls <= 2, "{calls} calls for s1's request");
    }
}
