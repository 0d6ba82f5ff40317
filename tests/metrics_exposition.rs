//! The Prometheus exposition right after construction: every docs/metrics.md metric has
//! HELP and TYPE and every known label value at zero; after events it still parses
//! (and passes `promtool check metrics` where promtool is installed).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use boundary_log_proxy::events::{
    BoundaryStatusReported, BufferFull, ForwardAttemptFailed, ForwardDropReason, ForwardDropped,
    ForwardSucceeded, InternalEvent as _, LogsReceived, RingCapacity, SequenceGap,
};
use boundary_log_proxy::metrics::Metrics;
use prometheus::{Encoder as _, Registry, TextEncoder};

/// (name, TYPE, label name, label values), written from docs/metrics.md,
/// independently of the code's own label enums.
const EXPECTED: &[(&str, &str, &str, &[&str])] = &[
    (
        "agent_boundary_log_proxy_batches_dropped_total",
        "counter",
        "reason",
        &["buffer_full", "forward_failed", "shutdown"],
    ),
    (
        "agent_boundary_log_proxy_logs_dropped_total",
        "counter",
        "reason",
        &[
            "buffer_full",
            "forward_failed",
            "boundary_channel_full",
            "boundary_batch_full",
            "shutdown",
        ],
    ),
    (
        "agent_boundary_log_proxy_batches_forwarded_total",
        "counter",
        "",
        &[],
    ),
    (
        "agent_boundary_log_proxy_logs_received_total",
        "counter",
        "",
        &[],
    ),
    (
        "agent_boundary_log_proxy_logs_forwarded_total",
        "counter",
        "",
        &[],
    ),
    (
        "agent_boundary_log_proxy_frames_rejected_total",
        "counter",
        "reason",
        &[
            "unsupported_tag",
            "too_large",
            "decode_error",
            "unknown_variant",
            "truncated",
            "empty",
            "bad_status",
            "superseded",
        ],
    ),
    (
        "agent_boundary_log_proxy_forward_requests_total",
        "counter",
        "result",
        &["ok", "retryable_error", "permanent_error"],
    ),
    (
        "agent_boundary_log_proxy_connections_rejected_total",
        "counter",
        "reason",
        &["limit", "peer_uid"],
    ),
    (
        "agent_boundary_log_proxy_sequence_gaps_total",
        "counter",
        "",
        &[],
    ),
    (
        "agent_boundary_log_proxy_sequence_out_of_order_total",
        "counter",
        "",
        &[],
    ),
    ("agent_boundary_log_proxy_ring_capacity", "gauge", "", &[]),
    ("agent_boundary_log_proxy_ring_occupancy", "gauge", "", &[]),
    ("agent_boundary_log_proxy_connections", "gauge", "", &[]),
    ("agent_boundary_log_proxy_socket_bound", "gauge", "", &[]),
    (
        "agent_boundary_log_proxy_socket_lost_total",
        "counter",
        "",
        &[],
    ),
    (
        "agent_boundary_log_proxy_forward_latency_seconds",
        "histogram",
        "",
        &[],
    ),
    (
        "agent_boundary_log_proxy_requests_split_total",
        "counter",
        "",
        &[],
    ),
    (
        "agent_boundary_log_proxy_coderd_connected",
        "gauge",
        "",
        &[],
    ),
    (
        "agent_boundary_log_proxy_coderd_connects_total",
        "counter",
        "result",
        &["ok", "http_error", "refused_version", "network_error"],
    ),
    (
        "agent_boundary_log_proxy_logs_non_uuid_session_total",
        "counter",
        "",
        &[],
    ),
];

fn exposition(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// A parsed exposition: HELP and TYPE per family, and every sample line's value.
#[derive(Default)]
struct Parsed {
    help: BTreeMap<String, String>,
    kind: BTreeMap<String, String>,
    samples: BTreeMap<String, f64>,
}

/// A strict reader of the text format for what this crate emits: comment lines are
/// HELP or TYPE; each sample is `name{labels} value` and belongs to a declared family.
fn parse(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has text");
            assert!(!help.trim().is_empty(), "empty HELP for {name}");
            assert!(
                parsed.help.insert(name.into(), help.into()).is_none(),
                "two HELP for {name}"
            );
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert!(
                parsed.help.contains_key(name),
                "TYPE before HELP for {name}"
            );
            parsed.kind.insert(name.into(), kind.into());
        } else {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|f| parsed.kind.get(*f).map(String::as_str) == Some("histogram"))
                })
                .unwrap_or(name);
            assert!(
                parsed.kind.contains_key(family),
                "sample {line:?} without TYPE"
            );
            assert!(
                parsed.samples.insert(series.into(), value).is_none(),
                "duplicate {series}"
            );
        }
    }
    parsed
}

#[test]
fn every_metric_is_exported_at_zero_with_help_and_type_from_the_start() {
    let registry = Registry::new();
    let _metrics = Metrics::new(&registry).unwrap();
    let parsed = parse(&exposition(&registry));

    let expected_names: BTreeSet<_> = EXPECTED.iter().map(|e| e.0.to_owned()).collect();
    let exported_names: BTreeSet<_> = parsed.kind.keys().cloned().collect();
    assert_eq!(
        exported_names, expected_names,
        "exported families differ from the contract"
    );

    for (name, kind, label, values) in EXPECTED {
        assert_eq!(parsed.kind[*name], *kind, "{name}");
        let series: Vec<String> = if *kind == "histogram" {
            vec![format!("{name}_count"), format!("{name}_sum")]
        } else if values.is_empty() {
            vec![(*name).to_owned()]
        } else {
            values
                .iter()
                .map(|v| format!("{name}{{{label}=\"{v}\"}}"))
                .collect()
        };
        for s in series {
            assert_eq!(parsed.samples.get(&s), Some(&0.0), "{s} not exported at 0");
        }
        let labelled = parsed
            .samples
            .keys()
            .filter(|k| k.starts_with(&format!("{name}{{")))
            .count();
        if *kind != "histogram" {
            assert_eq!(
                labelled,
                values.len(),
                "{name} has label values beyond the known set"
            );
        }
    }
}

#[test]
fn latency_histogram_spans_half_a_millisecond_to_ten_seconds() {
    let registry = Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    ForwardSucceeded {
        frames: 1,
        logs: 1,
        latency: Duration::from_micros(300),
    }
    .emit(&metrics);
    ForwardSucceeded {
        frames: 1,
        logs: 1,
        latency: Duration::from_secs(7),
    }
    .emit(&metrics);
    ForwardSucceeded {
        frames: 1,
        logs: 1,
        latency: Duration::from_secs(60),
    }
    .emit(&metrics);
    let parsed = parse(&exposition(&registry));
    let bucket = |le: &str| {
        parsed.samples
            [&format!("agent_boundary_log_proxy_forward_latency_seconds_bucket{{le=\"{le}\"}}")]
    };
    assert_eq!(bucket("0.0005"), 1.0, "300µs falls in the first bucket");
    assert_eq!(bucket("5"), 1.0);
    assert_eq!(bucket("10"), 2.0, "7s falls in the last finite bucket");
    assert_eq!(bucket("+Inf"), 3.0);
}

#[test]
fn events_show_in_the_exposition_under_their_labels() {
    let registry = Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    LogsReceived {
        frames: 4,
        logs: 40,
    }
    .emit(&metrics);
    BufferFull { logs: 10 }.emit(&metrics);
    ForwardDropped {
        frames: 1,
        logs: 10,
        reason: ForwardDropReason::Shutdown,
    }
    .emit(&metrics);
    BoundaryStatusReported {
        channel_full: 3,
        batch_full: 0,
    }
    .emit(&metrics);
    RingCapacity { capacity: 1024 }.emit(&metrics);
    SequenceGap { missing: 2 }.emit(&metrics);
    let parsed = parse(&exposition(&registry));
    let get = |s: &str| parsed.samples[&format!("agent_boundary_log_proxy_{s}")];
    assert_eq!(get("logs_received_total"), 40.0);
    assert_eq!(get("batches_dropped_total{reason=\"buffer_full\"}"), 1.0);
    assert_eq!(get("logs_dropped_total{reason=\"buffer_full\"}"), 10.0);
    assert_eq!(get("logs_dropped_total{reason=\"shutdown\"}"), 10.0);
    assert_eq!(
        get("logs_dropped_total{reason=\"boundary_channel_full\"}"),
        3.0
    );
    assert_eq!(get("logs_dropped_total{reason=\"forward_failed\"}"), 0.0);
    assert_eq!(get("ring_capacity"), 1024.0);
    assert_eq!(get("sequence_gaps_total"), 2.0);
}

#[test]
fn promtool_check_metrics_passes() {
    let registry = Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    let status = tonic::Status::unavailable("down");
    ForwardAttemptFailed {
        retryable: true,
        retrying: true,
        latency: Duration::from_millis(2),
        status: &status,
    }
    .emit(&metrics);
    let text = exposition(&registry);

    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            // Straight to stderr, which the harness does not capture: the skip shows.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED promtool_check_metrics_passes: cannot run promtool ({error}; apt-get install prometheus)"
            );
            return;
        }
        Err(error) => panic!("running promtool: {error}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // promtool lints too: any finding is printed, even with exit 0.
    let findings = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(findings.trim().is_empty(), "promtool findings:\n{findings}");
}
