//! The proxy's Prometheus metrics (names and labels in docs/metrics.md), registered on a caller's
//! registry with every label value exported at zero from the start, plus readers
//! for tests and the accounting invariant.

mod labels;
pub mod server;

use std::sync::Arc;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub use labels::CoderdConnectResult;
pub use labels::{
    BatchDropReason, ConnectionRejectReason, ForwardResult, FrameRejectReason, LogDropReason,
};
pub use server::{
    bind_metrics, serve_metrics, Health, MetricsServerError, MAX_METRICS_CONNECTIONS,
};

/// Every metric name starts with this.
pub const NAMESPACE: &str = "agent_boundary_log_proxy";

/// Upper bounds (seconds) of the call-latency histogram: 0.5ms to 10s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Registering the metrics failed (in practice: they are already on that registry).
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// prometheus refused a metric.
    #[error("registering metric {name}: {source}")]
    Register {
        /// The metric's full name.
        name: String,
        /// Why.
        #[source]
        source: prometheus::Error,
    },
}

/// Every metric the proxy exports. Update them through [`crate::events`], which
/// also logs; read them in tests through the `*_for` helpers and [`Metrics::accounting`].
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `batches_dropped_total{reason}`: received frames not delivered.
    pub batches_dropped: IntCounterVec,
    /// `logs_dropped_total{reason}`: logs not delivered, by the proxy or (reported) by boundary.
    pub logs_dropped: IntCounterVec,
    /// `batches_forwarded_total`: received frames delivered.
    pub batches_forwarded: IntCounter,
    /// `logs_received_total`: logs in frames that decoded.
    pub logs_received: IntCounter,
    /// `logs_forwarded_total`: logs delivered.
    pub logs_forwarded: IntCounter,
    /// `frames_rejected_total{reason}`: frames skipped or that closed their connection.
    pub frames_rejected: IntCounterVec,
    /// `forward_requests_total{result}`: `ReportBoundaryLogs` calls.
    pub forward_requests: IntCounterVec,
    /// `connections_rejected_total{reason}`: connections closed at accept.
    pub connections_rejected: IntCounterVec,
    /// `sequence_gaps_total`: logs missing from a session's sequence-number run.
    pub sequence_gaps: IntCounter,
    /// `sequence_out_of_order_total`: sequence numbers that went back or repeated.
    pub sequence_out_of_order: IntCounter,
    /// `ring_capacity`: ring slots.
    pub ring_capacity: IntGauge,
    /// `ring_occupancy`: frames in the ring, waiting to be forwarded.
    pub ring_occupancy: IntGauge,
    /// `connections`: open boundary connections.
    pub connections: IntGauge,
    /// `forward_latency_seconds`: duration of each `ReportBoundaryLogs` call.
    pub forward_latency_seconds: Histogram,
    /// `coderd_connected`: 1 while the coder transport's session to coderd is up.
    pub coderd_connected: IntGauge,
    /// `coderd_connects_total{result}`: connection attempts of the coder transport.
    pub coderd_connects: IntCounterVec,
    /// `logs_non_uuid_session_total`: logs forwarded whose session_id is not a UUID
    /// (coderd does not store them).
    pub logs_non_uuid_session: IntCounter,
    /// `requests_split_total`: requests cut in two for their size.
    pub requests_split: IntCounter,
    /// `socket_bound`: 1 while the socket file at the path is the proxy's own.
    pub socket_bound: IntGauge,
    /// `socket_lost_total`: times the socket file was found deleted or replaced.
    pub socket_lost: IntCounter,
    /// The disk spool's metrics, on the registry only with `--spool-dir`
    /// ([`Metrics::register_spool`]).
    pub spool: SpoolMetrics,
}

/// The disk spool's metrics.
#[derive(Debug, Clone)]
pub struct SpoolMetrics {
    /// `spool_bytes`: bytes the spool's segment files take.
    pub bytes: IntGauge,
    /// `spool_frames`: received frames held in the spool.
    pub frames: IntGauge,
    /// `spool_logs`: logs held in the spool.
    pub logs: IntGauge,
    /// `logs_spooled_total`: logs written to the spool.
    pub logs_spooled: IntCounter,
    /// `logs_replayed_total`: logs from the spool that the destination acknowledged.
    pub logs_replayed: IntCounter,
    /// `logs_recovered_total`: logs found in the spool at start (to be replayed, or
    /// counted as `spool_corrupt`).
    pub logs_recovered: IntCounter,
}

impl SpoolMetrics {
    fn new() -> Result<Self, MetricsError> {
        let counter = |name: &str, help: &str| {
            IntCounter::with_opts(Opts::new(full_name(name), help)).map_err(|source| {
                MetricsError::Register {
                    name: full_name(name),
                    source,
                }
            })
        };
        let gauge = |name: &str, help: &str| {
            IntGauge::with_opts(Opts::new(full_name(name), help)).map_err(|source| {
                MetricsError::Register {
                    name: full_name(name),
                    source,
                }
            })
        };
        Ok(Self {
            bytes: gauge("spool_bytes", "Bytes the disk spool's segment files take.")?,
            frames: gauge("spool_frames", "Received frames held in the disk spool.")?,
            logs: gauge("spool_logs", "Audit logs held in the disk spool.")?,
            logs_spooled: counter("logs_spooled_total", "Audit logs written to the disk spool.")?,
            logs_replayed: counter(
                "logs_replayed_total",
                "Audit logs from the disk spool that the destination acknowledged.",
            )?,
            logs_recovered: counter(
                "logs_recovered_total",
                "Audit logs found in the disk spool at start (replayed, or counted as spool_corrupt).",
            )?,
        })
    }
}

/// The counts in the accounting invariant (docs/metrics.md):
/// `received + recovered = forwarded + dropped_buffer_full + dropped_forward_failed +
/// dropped_shutdown + dropped_spool_corrupt + dropped_spool_full + spooled + pending`.
/// Without a spool the spool fields stay 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Accounting {
    /// `logs_received_total`.
    pub received: u64,
    /// `logs_forwarded_total`.
    pub forwarded: u64,
    /// `logs_dropped_total{reason="buffer_full"}`.
    pub dropped_buffer_full: u64,
    /// `logs_dropped_total{reason="forward_failed"}`.
    pub dropped_forward_failed: u64,
    /// `logs_dropped_total{reason="shutdown"}`.
    pub dropped_shutdown: u64,
    /// `logs_recovered_total`: found in the spool at start.
    pub recovered: u64,
    /// `logs_dropped_total{reason="spool_corrupt"}`.
    pub dropped_spool_corrupt: u64,
    /// `logs_dropped_total{reason="spool_full"}`.
    pub dropped_spool_full: u64,
    /// `spool_logs`: held in the spool.
    pub spooled: u64,
}

impl Accounting {
    /// Logs with a known fate: forwarded or dropped by the proxy.
    pub fn settled(&self) -> u64 {
        self.forwarded
            + self.dropped_buffer_full
            + self.dropped_forward_failed
            + self.dropped_shutdown
            + self.dropped_spool_corrupt
            + self.dropped_spool_full
    }

    /// Logs still buffered in memory or in flight; `None` if more were settled
    /// (or spooled) than received and recovered (a double count: a bug).
    pub fn pending(&self) -> Option<u64> {
        (self.received + self.recovered).checked_sub(self.settled() + self.spooled)
    }
}

fn full_name(name: &str) -> String {
    format!("{NAMESPACE}_{name}")
}

struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn register<M: prometheus::core::Collector + Clone + 'static>(
        &self,
        name: &str,
        metric: Result<M, prometheus::Error>,
    ) -> Result<M, MetricsError> {
        let wrap = |source| MetricsError::Register {
            name: full_name(name),
            source,
        };
        let metric = metric.map_err(wrap)?;
        self.0.register(Box::new(metric.clone())).map_err(wrap)?;
        Ok(metric)
    }

    fn counter(&self, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
        self.register(
            name,
            IntCounter::with_opts(Opts::new(full_name(name), help)),
        )
    }

    fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
        self.register(name, IntGauge::with_opts(Opts::new(full_name(name), help)))
    }

    /// A labelled counter with every value in `values` created at zero.
    fn counter_vec<L: Copy>(
        &self,
        name: &str,
        help: &str,
        label: &str,
        values: &[L],
        as_str: impl Fn(L) -> &'static str,
    ) -> Result<IntCounterVec, MetricsError> {
        let vec = self.register(
            name,
            IntCounterVec::new(Opts::new(full_name(name), help), &[label]),
        )?;
        for &value in values {
            vec.with_label_values(&[as_str(value)]);
        }
        Ok(vec)
    }
}

impl Metrics {
    /// Creates every metric and registers it on `registry`. Fails if they are
    /// already registered there. The spool's metrics are registered by
    /// [`Self::register_spool`].
    pub fn new(registry: &Registry) -> Result<Arc<Self>, MetricsError> {
        let r = Registrar(registry);
        let batch_reasons: Vec<BatchDropReason> = BatchDropReason::ALL
            .iter()
            .copied()
            .filter(|r| !BatchDropReason::SPOOL.contains(r))
            .collect();
        let log_reasons: Vec<LogDropReason> = LogDropReason::ALL
            .iter()
            .copied()
            .filter(|r| !LogDropReason::SPOOL.contains(r))
            .collect();
        Ok(Arc::new(Self {
            batches_dropped: r.counter_vec(
                "batches_dropped_total",
                "Received frames (coder's batches) that were not delivered, by reason.",
                "reason",
                &batch_reasons,
                BatchDropReason::as_str,
            )?,
            logs_dropped: r.counter_vec(
                "logs_dropped_total",
                "Audit logs that were not delivered, by reason; boundary_* reasons are drops boundary reported on its side.",
                "reason",
                &log_reasons,
                LogDropReason::as_str,
            )?,
            batches_forwarded: r.counter(
                "batches_forwarded_total",
                "Received frames (coder's batches) delivered to the reporter.",
            )?,
            logs_received: r.counter(
                "logs_received_total",
                "Audit logs received in frames that decoded.",
            )?,
            logs_forwarded: r.counter(
                "logs_forwarded_total",
                "Audit logs delivered to the reporter.",
            )?,
            frames_rejected: r.counter_vec(
                "frames_rejected_total",
                "Frames from boundary that were skipped or closed their connection, by reason.",
                "reason",
                FrameRejectReason::ALL,
                FrameRejectReason::as_str,
            )?,
            forward_requests: r.counter_vec(
                "forward_requests_total",
                "ReportBoundaryLogs calls made, by result.",
                "result",
                ForwardResult::ALL,
                ForwardResult::as_str,
            )?,
            connections_rejected: r.counter_vec(
                "connections_rejected_total",
                "Connections from boundary closed as soon as they were accepted, by reason.",
                "reason",
                ConnectionRejectReason::ALL,
                ConnectionRejectReason::as_str,
            )?,
            sequence_gaps: r.counter(
                "sequence_gaps_total",
                "Audit logs missing from a session's sequence_number run.",
            )?,
            sequence_out_of_order: r.counter(
                "sequence_out_of_order_total",
                "Audit logs whose sequence_number went back or repeated within a session.",
            )?,
            ring_capacity: r.gauge(
                "ring_capacity",
                "Slots in the ring buffer (one slot holds one received frame).",
            )?,
            ring_occupancy: r.gauge(
                "ring_occupancy",
                "Received frames waiting in the ring buffer.",
            )?,
            connections: r.gauge("connections", "Open connections from boundary.")?,
            forward_latency_seconds: r.register(
                "forward_latency_seconds",
                Histogram::with_opts(
                    HistogramOpts::new(
                        full_name("forward_latency_seconds"),
                        "Duration of each ReportBoundaryLogs call, in seconds.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                ),
            )?,
            coderd_connected: r.gauge(
                "coderd_connected",
                "1 while the coder transport is connected to coderd's Agent API, else 0.",
            )?,
            coderd_connects: r.counter_vec(
                "coderd_connects_total",
                "Connection attempts to coderd's Agent API (coder transport), by result.",
                "result",
                CoderdConnectResult::ALL,
                CoderdConnectResult::as_str,
            )?,
            logs_non_uuid_session: r.counter(
                "logs_non_uuid_session_total",
                "Audit logs forwarded whose session_id is not a UUID (coderd does not store them).",
            )?,
            requests_split: r.counter(
                "requests_split_total",
                "Requests cut in two at a log boundary because the destination refused them for their size, or they were over the size it was found to take.",
            )?,
            socket_bound: r.gauge(
                "socket_bound",
                "1 while the socket file at the socket path is the proxy's own and accepts connections, else 0.",
            )?,
            socket_lost: r.counter(
                "socket_lost_total",
                "Times the socket file was found deleted or replaced by another file while the proxy ran.",
            )?,
            spool: SpoolMetrics::new()?,
        }))
    }

    /// Puts the spool's metrics on `registry` and exports the spool's drop reasons
    /// at zero (only a proxy with `--spool-dir` exports them).
    pub fn register_spool(&self, registry: &Registry) -> Result<(), MetricsError> {
        let s = &self.spool;
        let all: [(&str, Box<dyn prometheus::core::Collector>); 6] = [
            ("spool_bytes", Box::new(s.bytes.clone())),
            ("spool_frames", Box::new(s.frames.clone())),
            ("spool_logs", Box::new(s.logs.clone())),
            ("logs_spooled_total", Box::new(s.logs_spooled.clone())),
            ("logs_replayed_total", Box::new(s.logs_replayed.clone())),
            ("logs_recovered_total", Box::new(s.logs_recovered.clone())),
        ];
        for (name, metric) in all {
            registry
                .register(metric)
                .map_err(|source| MetricsError::Register {
                    name: full_name(name),
                    source,
                })?;
        }
        for reason in BatchDropReason::SPOOL {
            self.batches_dropped.with_label_values(&[reason.as_str()]);
        }
        for reason in LogDropReason::SPOOL {
            self.logs_dropped.with_label_values(&[reason.as_str()]);
        }
        Ok(())
    }

    /// `batches_dropped_total{reason}`.
    pub fn batches_dropped_for(&self, reason: BatchDropReason) -> u64 {
        self.batches_dropped
            .with_label_values(&[reason.as_str()])
            .get()
    }

    /// `logs_dropped_total{reason}`.
    pub fn logs_dropped_for(&self, reason: LogDropReason) -> u64 {
        self.logs_dropped
            .with_label_values(&[reason.as_str()])
            .get()
    }

    /// `frames_rejected_total{reason}`.
    pub fn frames_rejected_for(&self, reason: FrameRejectReason) -> u64 {
        self.frames_rejected
            .with_label_values(&[reason.as_str()])
            .get()
    }

    /// `forward_requests_total{result}`.
    pub fn forward_requests_for(&self, result: ForwardResult) -> u64 {
        self.forward_requests
            .with_label_values(&[result.as_str()])
            .get()
    }

    /// `connections_rejected_total{reason}`.
    pub fn connections_rejected_for(&self, reason: ConnectionRejectReason) -> u64 {
        self.connections_rejected
            .with_label_values(&[reason.as_str()])
            .get()
    }

    /// `coderd_connects_total{result}`.
    pub fn coderd_connects_for(&self, result: CoderdConnectResult) -> u64 {
        self.coderd_connects
            .with_label_values(&[result.as_str()])
            .get()
    }

    /// `logs_dropped_total{reason}` without creating the series (0 if it is not exported).
    fn logs_dropped_if_exported(&self, reason: LogDropReason) -> u64 {
        use prometheus::core::Collector;
        self.logs_dropped
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .find(|m| m.get_label().iter().any(|l| l.value() == reason.as_str()))
            .map_or(0, |m| m.get_counter().get_value() as u64)
    }

    /// The counters of the accounting invariant, read now (each read is atomic; the
    /// set is consistent only at a quiet moment).
    pub fn accounting(&self) -> Accounting {
        Accounting {
            received: self.logs_received.get(),
            forwarded: self.logs_forwarded.get(),
            dropped_buffer_full: self.logs_dropped_for(LogDropReason::BufferFull),
            dropped_forward_failed: self.logs_dropped_for(LogDropReason::ForwardFailed),
            dropped_shutdown: self.logs_dropped_for(LogDropReason::Shutdown),
            recovered: self.spool.logs_recovered.get(),
            dropped_spool_corrupt: self.logs_dropped_if_exported(LogDropReason::SpoolCorrupt),
            dropped_spool_full: self.logs_dropped_if_exported(LogDropReason::SpoolFull),
            spooled: u64::try_from(self.spool.logs.get()).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registering_twice_on_one_registry_fails_with_the_metric_name() {
        let registry = Registry::new();
        Metrics::new(&registry).unwrap();
        let err = Metrics::new(&registry).unwrap_err();
        assert!(err.to_string().contains(NAMESPACE), "{err}");
    }

    #[test]
    fn spool_metrics_and_reasons_are_exported_only_once_registered() {
        let registry = Registry::new();
        let m = Metrics::new(&registry).unwrap();
        let text = || {
            let mut out = Vec::new();
            use prometheus::Encoder;
            prometheus::TextEncoder::new()
                .encode(&registry.gather(), &mut out)
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(m.accounting().dropped_spool_full, 0);
        assert!(!text().contains("spool"), "{}", text());
        m.register_spool(&registry).unwrap();
        let text = text();
        for series in [
            "spool_bytes 0",
            "spool_frames 0",
            "logs_spooled_total 0",
            "logs_replayed_total 0",
            "logs_dropped_total{reason=\"spool_corrupt\"} 0",
            "logs_dropped_total{reason=\"spool_full\"} 0",
            "batches_dropped_total{reason=\"spool_full\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }

    #[test]
    fn spooled_and_recovered_logs_enter_the_accounting() {
        let m = Metrics::new(&Registry::new()).unwrap();
        m.logs_received.inc_by(10);
        m.spool.logs_recovered.inc_by(5);
        m.spool.logs.set(6);
        m.logs_forwarded.inc_by(7);
        m.logs_dropped
            .with_label_values(&[LogDropReason::SpoolCorrupt.as_str()])
            .inc_by(2);
        assert_eq!(m.accounting().pending(), Some(0));
    }

    #[test]
    fn accounting_reads_the_invariant_counters() {
        let m = Metrics::new(&Registry::new()).unwrap();
        m.logs_received.inc_by(10);
        m.logs_forwarded.inc_by(4);
        m.logs_dropped
            .with_label_values(&[LogDropReason::BufferFull.as_str()])
            .inc_by(3);
        m.logs_dropped
            .with_label_values(&[LogDropReason::BoundaryChannelFull.as_str()])
            .inc_by(100);
        let a = m.accounting();
        assert_eq!(
            a.settled(),
            7,
            "boundary-side drops are not in the invariant"
        );
        assert_eq!(a.pending(), Some(3));
        m.logs_forwarded.inc_by(4);
        assert_eq!(m.accounting().pending(), None);
    }
}
