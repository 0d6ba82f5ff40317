//! Delivery: up to [`MAX_IN_FLIGHT`] requests are sent at once, as long as no two
//! of them share a connection or a session (so every connection's and session's
//! logs still arrive in order), each retried on its own until delivered or dropped.
//!
//! One call at a time left both ends idle in turn: coderd decoding one request
//! while the proxy waited, the proxy encoding the next while coderd waited.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::batch::{OrderKey, Outgoing};
use super::retry::Backoff;
use super::ForwarderConfig;
use crate::events::{
    ForwardAttemptFailed, ForwardDropReason, ForwardDropped, ForwardSucceeded, InternalEvent,
};
use crate::metrics::Metrics;
use crate::reporter::{grpc::classify, grpc::Failure, EncodedRequest, Reporter};

/// Requests in flight at once at most.
pub(super) const MAX_IN_FLIGHT: usize = 4;

/// One delivery: its place in the order requests were taken, the request, and
/// whether it was delivered or dropped (true) or cancelled (false).
type Delivery<'a> = Pin<Box<dyn Future<Output = (u64, Outgoing, bool)> + Send + 'a>>;

/// Delivers `pending`, then what arrives on `rx`, until `cancel` fires or `rx` is
/// closed and everything taken is settled. Returns what is left undelivered, in
/// the order it was built (cancelled deliveries first).
pub(super) async fn deliver_all<R: Reporter>(
    mut pending: VecDeque<Outgoing>,
    rx: &mut mpsc::Receiver<Outgoing>,
    config: &ForwarderConfig,
    metrics: &Metrics,
    reporter: &R,
    cancel: &CancellationToken,
) -> VecDeque<Outgoing> {
    let mut flights: Vec<Delivery<'_>> = Vec::with_capacity(MAX_IN_FLIGHT);
    // What is in flight, for the conflict check.
    let mut in_flight: Vec<(u64, OrderKey)> = Vec::with_capacity(MAX_IN_FLIGHT);
    let mut next: Option<Outgoing> = None;
    let mut cancelled: Vec<(u64, Outgoing)> = Vec::new();
    let mut order = 0u64;
    let mut rx_open = true;

    loop {
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
                order, out, config, metrics, reporter, cancel,
            )));
            order += 1;
        }
        if flights.is_empty() && next.is_none() && !rx_open {
            // The drain thread ended (ring closed and empty) and all is settled.
            break;
        }
        let room = flights.len() < MAX_IN_FLIGHT && next.is_none() && rx_open;
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            (done, out, settled) = any(&mut flights), if !flights.is_empty() => {
                in_flight.retain(|(o, _)| *o != done);
                if !settled {
                    cancelled.push((done, out));
                }
            }
            received = rx.recv(), if room => match received {
                Some(out) => next = Some(out),
                None => rx_open = false,
            },
        }
    }

    // Cancelled: every delivery still running sees it and hands its request back.
    while !flights.is_empty() {
        let (done, out, settled) = any(&mut flights).await;
        if !settled {
            cancelled.push((done, out));
        }
    }
    cancelled.sort_by_key(|(o, _)| *o);
    let mut left: VecDeque<Outgoing> = cancelled.into_iter().map(|(_, out)| out).collect();
    left.extend(next);
    left.extend(pending);
    left
}

/// Waits for the first of `flights` to finish and removes it.
fn any<'f, 'a: 'f>(
    flights: &'f mut Vec<Delivery<'a>>,
) -> impl Future<Output = (u64, Outgoing, bool)> + use<'f, 'a> {
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

async fn deliver_owned<R: Reporter>(
    order: u64,
    out: Outgoing,
    config: &ForwarderConfig,
    metrics: &Metrics,
    reporter: &R,
    cancel: &CancellationToken,
) -> (u64, Outgoing, bool) {
    let mut rng = fastrand::Rng::new();
    let settled = deliver(&out.request, config, metrics, reporter, cancel, &mut rng).await;
    (order, out, settled)
}

/// Sends one request until it is delivered or dropped (true), or until cancelled
/// (false: the caller keeps it).
async fn deliver<R: Reporter>(
    request: &EncodedRequest,
    config: &ForwarderConfig,
    metrics: &Metrics,
    reporter: &R,
    cancel: &CancellationToken,
    rng: &mut fastrand::Rng,
) -> bool {
    let mut backoff = Backoff::new(config.retry_max_elapsed);
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            biased;
            _ = cancel.cancelled() => return false,
            outcome = reporter.report_encoded(request.clone()) => outcome,
        };
        let latency = started.elapsed();
        let status = match outcome {
            Ok(()) => {
                ForwardSucceeded {
                    frames: u64::from(request.frames),
                    logs: u64::from(request.logs),
                    latency,
                }
                .emit(metrics);
                return true;
            }
            Err(status) => status,
        };
        let retryable = classify(&status) == Failure::Retryable;
        ForwardAttemptFailed {
            retryable,
            latency,
            status: &status,
        }
        .emit(metrics);
        let pause = if retryable {
            backoff.next_pause(rng)
        } else {
            None
        };
        let Some(pause) = pause else {
            ForwardDropped {
                frames: u64::from(request.frames),
                logs: u64::from(request.logs),
                reason: ForwardDropReason::ForwardFailed,
            }
            .emit(metrics);
            return true;
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
