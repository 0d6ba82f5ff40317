//! Delivery: up to [`MAX_IN_FLIGHT`] requests are sent at once, as long as no two
//! of them share a connection or a session (so every connection's and session's
//! logs still arrive in order), each retried on its own until delivered or dropped.
//! A request the destination refuses for its size is split in two at a log boundary
//! and its parts are sent in order in its place, down to single logs; a request over
//! the size the destination was found to take is split before it is sent.
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
use super::split::{self, Learned};
use super::ForwarderConfig;
use crate::events::{
    ForwardAttemptFailed, ForwardDropReason, ForwardDropped, ForwardRefusedTooLarge,
    ForwardSucceeded, InternalEvent, RequestSplit,
};
use crate::metrics::Metrics;
use crate::reporter::grpc::{classify, Failure, Oversize};
use crate::reporter::{EncodedRequest, Reporter};

/// Requests in flight at once at most.
pub(super) const MAX_IN_FLIGHT: usize = 4;

/// One delivery: its place in the order requests were taken, and what of its request
/// is left undelivered because it was cancelled, in order (empty: all of it was
/// delivered or dropped).
type Delivery<'a> = Pin<Box<dyn Future<Output = (u64, Vec<Outgoing>)> + Send + 'a>>;

/// Delivers `pending`, then what arrives on `rx`, until `cancel` fires or `rx` is
/// closed and everything taken is settled. Returns what is left undelivered, in
/// the order it was built (cancelled deliveries first).
pub(super) async fn deliver_all<R: Reporter>(
    mut pending: VecDeque<Outgoing>,
    rx: &mut mpsc::Receiver<Outgoing>,
    config: &ForwarderConfig,
    learned: &Learned,
    metrics: &Metrics,
    reporter: &R,
    cancel: &CancellationToken,
) -> VecDeque<Outgoing> {
    let mut flights: Vec<Delivery<'_>> = Vec::with_capacity(MAX_IN_FLIGHT);
    // What is in flight, for the conflict check.
    let mut in_flight: Vec<(u64, OrderKey)> = Vec::with_capacity(MAX_IN_FLIGHT);
    let mut next: Option<Outgoing> = None;
    let mut cancelled: Vec<(u64, Vec<Outgoing>)> = Vec::new();
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
                order, out, config, learned, metrics, reporter, cancel,
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
            (done, left) = any(&mut flights), if !flights.is_empty() => {
                in_flight.retain(|(o, _)| *o != done);
                if !left.is_empty() {
                    cancelled.push((done, left));
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
        let (done, left) = any(&mut flights).await;
        if !left.is_empty() {
            cancelled.push((done, left));
        }
    }
    cancelled.sort_by_key(|(o, _)| *o);
    let mut left: VecDeque<Outgoing> = cancelled.into_iter().flat_map(|(_, out)| out).collect();
    left.extend(next);
    left.extend(pending);
    left
}

/// Waits for the first of `flights` to finish and removes it.
fn any<'f, 'a: 'f>(
    flights: &'f mut Vec<Delivery<'a>>,
) -> impl Future<Output = (u64, Vec<Outgoing>)> + use<'f, 'a> {
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
    learned: &Learned,
    metrics: &Metrics,
    reporter: &R,
    cancel: &CancellationToken,
) -> (u64, Vec<Outgoing>) {
    let mut rng = fastrand::Rng::new();
    let left = deliver(out, config, learned, metrics, reporter, cancel, &mut rng).await;
    (order, left)
}

/// Sends one request, or the parts it is split into, in order, until each is
/// delivered or dropped. Returns what is left when cancelled, in order (empty when
/// everything was settled).
async fn deliver<R: Reporter>(
    out: Outgoing,
    config: &ForwarderConfig,
    learned: &Learned,
    metrics: &Metrics,
    reporter: &R,
    cancel: &CancellationToken,
    rng: &mut fastrand::Rng,
) -> Vec<Outgoing> {
    // Parts still to send, the next one last.
    let mut parts = vec![out];
    while let Some(part) = parts.pop() {
        if let Some((head, rest)) = split::fit(&part, learned.limits()) {
            split_event(&part).emit(metrics);
            parts.push(rest);
            parts.push(head);
            continue;
        }
        match attempt(&part.request, config, metrics, reporter, cancel, rng).await {
            Attempt::Settled => {}
            Attempt::Cancelled => {
                parts.push(part);
                parts.reverse();
                return parts;
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
    Vec::new()
}

fn split_event(out: &Outgoing) -> RequestSplit {
    RequestSplit {
        logs: u64::from(out.request.logs),
        bytes: out.request.bytes.len() as u64,
    }
}

/// How sending one request ended.
enum Attempt {
    /// Delivered, or dropped (refused for good, or retries ran out).
    Settled,
    /// Cancelled: the caller keeps it.
    Cancelled,
    /// Refused for its size; nothing is counted yet (the caller splits it, or drops
    /// it when it cannot be split).
    TooLarge {
        over: Oversize,
        status: tonic::Status,
        latency: std::time::Duration,
    },
}

/// Sends one request until it is delivered, dropped, refused for its size, or cancelled.
async fn attempt<R: Reporter>(
    request: &EncodedRequest,
    config: &ForwarderConfig,
    metrics: &Metrics,
    reporter: &R,
    cancel: &CancellationToken,
    rng: &mut fastrand::Rng,
) -> Attempt {
    let mut backoff = Backoff::new(config.retry_max_elapsed);
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Attempt::Cancelled,
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
                return Attempt::Settled;
            }
            Err(status) => status,
        };
        let failure = classify(&status);
        if let Failure::TooLarge(over) = failure {
            return Attempt::TooLarge {
                over,
                status,
                latency,
            };
        }
        let retryable = failure == Failure::Retryable;
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
            return Attempt::Settled;
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Attempt::Cancelled,
            _ = tokio::time::sleep(pause) => {}
        }
    }
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
            })
            .collect()
    }

    async fn deliver_requests(
        requests: Vec<Outgoing>,
        reporter: &Picky,
        limits: Limits,
    ) -> (Arc<Metrics>, Learned) {
        let metrics = Metrics::new(&Registry::new()).unwrap();
        let config = ForwarderConfig {
            limits,
            linger: Duration::ZERO,
            retry_max_elapsed: Duration::ZERO,
        };
        let learned = Learned::new(limits);
        let (tx, mut rx) = mpsc::channel(1);
        drop(tx);
        let left = deliver_all(
            requests.into(),
            &mut rx,
            &config,
            &learned,
            &metrics,
            reporter,
            &CancellationToken::new(),
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
}
