//! Delivery: up to [`MAX_IN_FLIGHT`] requests are sent at once, as long as no two
//! of them share a connection or a session (so every connection's and session's
//! logs still arrive in order), each retried on its own until delivered or dropped.
//!
//! One call at a time left both ends idle in turn: coderd decoding one request
//! while the proxy waited, the proxy encoding the next while coderd waited.
//!
//! With a disk spool the loop has a second mode, spooling: entered when a
//! request's retries run out on transient errors, or when the destination is
//! failing while the ring fills (or closes). Then every request in memory is
//! written to the spool in the order it was taken, every newer one queues behind
//! them on disk, and the spool's oldest record is replayed one at a time until
//! the spool is empty, so each session's order holds across the outage.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::batch::{OrderKey, Outgoing};
use super::retry::Backoff;
use super::spooling::{Replay, Spooler};
use super::ForwarderConfig;
use crate::events::{
    ForwardAttemptFailed, ForwardDropReason, ForwardDropped, ForwardSucceeded, InternalEvent,
};
use crate::intake::QueuedFrame;
use crate::metrics::Metrics;
use crate::reporter::{grpc::classify, grpc::Failure, EncodedRequest, Reporter};
use crate::ring::RingHandle;

/// Requests in flight at once at most.
pub(super) const MAX_IN_FLIGHT: usize = 4;
/// How often the loop syncs the spool while a spool is on.
const SPOOL_TICK: Duration = Duration::from_millis(50);
/// How often the loop looks at the ring's fill while the destination is failing
/// (a 4096-frame ring fills from half to full in no less than this at 400 k frames/s).
const BACKLOG_POLL: Duration = Duration::from_millis(5);

/// How one delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Delivered, or dropped and counted.
    Settled,
    /// Cancelled: the caller keeps the request.
    Cancelled,
    /// Retries ran out on transient errors and a spool can take it (nothing counted).
    Exhausted,
}

/// How one replay of a spooled record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replayed {
    Delivered,
    /// Refused for good, counted as `forward_failed`.
    Refused,
    Cancelled,
}

/// One delivery: its place in the order requests were taken, the request, and how it ended.
type Delivery<'a> = Pin<Box<dyn Future<Output = (u64, Outgoing, Outcome)> + Send + 'a>>;
type ReplayDelivery<'a> = Pin<Box<dyn Future<Output = (Replay, Replayed)> + Send + 'a>>;

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

/// Delivers `pending`, then what arrives on `rx`, until `cancel` fires or `rx` is
/// closed and everything taken is settled (or spooled). Returns what is left
/// undelivered, in the order it was built (cancelled deliveries first).
pub(super) async fn deliver_all<R: Reporter>(
    mut pending: VecDeque<Outgoing>,
    rx: &mut mpsc::Receiver<Outgoing>,
    config: &ForwarderConfig,
    metrics: &Metrics,
    reporter: &R,
    cancel: &CancellationToken,
    mut spool: Option<SpoolLink<'_>>,
) -> VecDeque<Outgoing> {
    // Set while the destination's last answer was a transient error.
    let failing = AtomicBool::new(false);
    let failing = &failing;
    let spooled = spool.is_some();
    let mut flights: Vec<Delivery<'_>> = Vec::with_capacity(MAX_IN_FLIGHT);
    // What is in flight, for the conflict check.
    let mut in_flight: Vec<(u64, OrderKey)> = Vec::with_capacity(MAX_IN_FLIGHT);
    let mut next: Option<Outgoing> = None;
    let mut cancelled: Vec<(u64, Outgoing)> = Vec::new();
    let mut exhausted: Vec<(u64, Outgoing)> = Vec::new();
    let mut order = 0u64;
    let mut rx_open = true;
    // Cancels the direct deliveries when the loop switches to spooling.
    let mut flight_cancel = cancel.child_token();
    let mut spooling = spool.as_ref().is_some_and(|s| !s.spooler.is_empty());
    let mut replaying: Option<ReplayDelivery<'_>> = None;
    let mut tick = tokio::time::interval(SPOOL_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if let Some(link) = spool.as_mut() {
            let failing_backlog = failing.load(Ordering::Relaxed) && link.backlog();
            if !spooling && (!exhausted.is_empty() || failing_backlog) {
                // Everything in memory goes to the spool, in the order it was taken.
                flight_cancel.cancel();
                let mut to_spool = std::mem::take(&mut exhausted);
                while !flights.is_empty() {
                    let (done, out, outcome) = any(&mut flights).await;
                    if outcome != Outcome::Settled {
                        to_spool.push((done, out));
                    }
                }
                in_flight.clear();
                to_spool.sort_by_key(|(o, _)| *o);
                for (_, out) in to_spool {
                    link.spooler.append(&out.request, metrics);
                }
                flight_cancel = cancel.child_token();
                spooling = true;
            }
            if spooling {
                // Newer requests queue behind the spooled ones, on disk.
                loop {
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
                    link.spooler.append(&out.request, metrics);
                }
                if replaying.is_none() && rx_open && !cancel.is_cancelled() {
                    match link.spooler.peek(metrics) {
                        Some(record) => {
                            replaying =
                                Some(Box::pin(replay(record, metrics, reporter, cancel, failing)))
                        }
                        // Drained: back to delivering directly.
                        None => spooling = false,
                    }
                }
            }
        }
        if !spooling {
            // Start whatever may start: in order, stopping at the first conflict.
            while flights.len() < MAX_IN_FLIGHT && !cancel.is_cancelled() {
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
                    config,
                    metrics,
                    reporter,
                    flight_cancel.clone(),
                    failing,
                    spooled,
                )));
                order += 1;
            }
        }
        let settled = next.is_none() && pending.is_empty() && !rx_open;
        if settled && (spooling || (flights.is_empty() && exhausted.is_empty())) {
            // The drain thread ended (ring closed and empty) and all is settled or
            // on disk; a replay still running is dropped (its record stays spooled).
            break;
        }
        let room = rx_open
            && next.is_none()
            && (spooling || (flights.len() < MAX_IN_FLIGHT && exhausted.is_empty()));
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            (done, out, outcome) = any(&mut flights), if !flights.is_empty() => {
                in_flight.retain(|(o, _)| *o != done);
                match outcome {
                    Outcome::Settled => {}
                    Outcome::Cancelled => cancelled.push((done, out)),
                    Outcome::Exhausted => exhausted.push((done, out)),
                }
            }
            (record, replayed) = poll_some(&mut replaying), if replaying.is_some() => {
                replaying = None;
                if let Some(link) = spool.as_mut() {
                    match replayed {
                        Replayed::Delivered => link.spooler.ack(&record, true, metrics),
                        Replayed::Refused => link.spooler.ack(&record, false, metrics),
                        Replayed::Cancelled => {}
                    }
                }
            }
            received = rx.recv(), if room => match received {
                Some(out) => next = Some(out),
                None => rx_open = false,
            },
            _ = tick.tick(), if spooled => {
                if let Some(link) = spool.as_mut() {
                    link.spooler.tick();
                }
            }
            _ = tokio::time::sleep(BACKLOG_POLL),
                if spooled && !spooling && failing.load(Ordering::Relaxed) => {}
        }
    }
    drop(replaying);

    // Cancelled: every delivery still running sees it and hands its request back.
    while !flights.is_empty() {
        let (done, out, outcome) = any(&mut flights).await;
        if outcome != Outcome::Settled {
            cancelled.push((done, out));
        }
    }
    cancelled.extend(exhausted);
    cancelled.sort_by_key(|(o, _)| *o);
    let mut left: VecDeque<Outgoing> = cancelled.into_iter().map(|(_, out)| out).collect();
    left.extend(next);
    left.extend(pending);
    left
}

/// Waits for the first of `flights` to finish and removes it.
fn any<'f, 'a: 'f>(
    flights: &'f mut Vec<Delivery<'a>>,
) -> impl Future<Output = (u64, Outgoing, Outcome)> + use<'f, 'a> {
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

/// Waits for the future in `slot` (pending forever when there is none).
fn poll_some<'f, 'a: 'f>(
    slot: &'f mut Option<ReplayDelivery<'a>>,
) -> impl Future<Output = (Replay, Replayed)> + use<'f, 'a> {
    std::future::poll_fn(move |cx| match slot.as_mut() {
        Some(fut) => fut.as_mut().poll(cx),
        None => Poll::Pending,
    })
}

#[allow(clippy::too_many_arguments)]
async fn deliver_owned<R: Reporter>(
    order: u64,
    out: Outgoing,
    config: &ForwarderConfig,
    metrics: &Metrics,
    reporter: &R,
    cancel: CancellationToken,
    failing: &AtomicBool,
    spooled: bool,
) -> (u64, Outgoing, Outcome) {
    let mut rng = fastrand::Rng::new();
    let outcome = deliver(
        &out.request,
        config,
        metrics,
        reporter,
        &cancel,
        failing,
        spooled,
        &mut rng,
    )
    .await;
    (order, out, outcome)
}

/// What one call did.
enum Attempt {
    Ok,
    Retryable,
    Permanent,
    Cancelled,
}

/// Makes one call and records it (latency, result, the destination failing or not).
async fn attempt<R: Reporter>(
    request: &EncodedRequest,
    metrics: &Metrics,
    reporter: &R,
    cancel: &CancellationToken,
    failing: &AtomicBool,
) -> Attempt {
    let started = Instant::now();
    let outcome = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Attempt::Cancelled,
        outcome = reporter.report_encoded(request.clone()) => outcome,
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
            return Attempt::Ok;
        }
        Err(status) => status,
    };
    let retryable = classify(&status) == Failure::Retryable;
    if retryable {
        failing.store(true, Ordering::Relaxed);
    }
    ForwardAttemptFailed {
        retryable,
        latency,
        status: &status,
    }
    .emit(metrics);
    if retryable {
        Attempt::Retryable
    } else {
        Attempt::Permanent
    }
}

fn count_failed(request: &EncodedRequest, metrics: &Metrics) {
    ForwardDropped {
        frames: u64::from(request.frames),
        logs: u64::from(request.logs),
        reason: ForwardDropReason::ForwardFailed,
    }
    .emit(metrics);
}

/// Sends one request until it is delivered or dropped, until its retries run out
/// with a spool to take it (`Exhausted`), or until cancelled.
#[allow(clippy::too_many_arguments)]
async fn deliver<R: Reporter>(
    request: &EncodedRequest,
    config: &ForwarderConfig,
    metrics: &Metrics,
    reporter: &R,
    cancel: &CancellationToken,
    failing: &AtomicBool,
    spooled: bool,
    rng: &mut fastrand::Rng,
) -> Outcome {
    let mut backoff = Backoff::new(config.retry_max_elapsed);
    loop {
        match attempt(request, metrics, reporter, cancel, failing).await {
            Attempt::Ok => return Outcome::Settled,
            Attempt::Cancelled => return Outcome::Cancelled,
            Attempt::Permanent => {
                count_failed(request, metrics);
                return Outcome::Settled;
            }
            Attempt::Retryable => {}
        }
        let Some(pause) = backoff.next_pause(rng) else {
            if spooled {
                return Outcome::Exhausted;
            }
            count_failed(request, metrics);
            return Outcome::Settled;
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Outcome::Cancelled,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Sends a spooled record until the destination takes it or refuses it for good;
/// transient errors are retried with backoff for as long as it takes (the record
/// is safe on disk meanwhile).
async fn replay<R: Reporter>(
    record: Replay,
    metrics: &Metrics,
    reporter: &R,
    cancel: &CancellationToken,
    failing: &AtomicBool,
) -> (Replay, Replayed) {
    let mut rng = fastrand::Rng::new();
    let mut backoff = Backoff::new(Duration::MAX);
    loop {
        let replayed = match attempt(&record.request, metrics, reporter, cancel, failing).await {
            Attempt::Ok => Replayed::Delivered,
            Attempt::Cancelled => Replayed::Cancelled,
            Attempt::Permanent => {
                count_failed(&record.request, metrics);
                Replayed::Refused
            }
            Attempt::Retryable => {
                let pause = backoff
                    .next_pause(&mut rng)
                    .unwrap_or(Duration::from_secs(5));
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => Replayed::Cancelled,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
        };
        return (record, replayed);
    }
}
