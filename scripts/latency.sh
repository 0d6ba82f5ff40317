#!/usr/bin/env bash
# p50/p99 latency from frame written to log received by a gRPC sink, through the
# real `serve` binary with --batch-linger 1ms (examples/latency.rs does the work).
#
# Usage: scripts/latency.sh [RATE_LOGS_PER_S]   (default 850000: half the peak
#        sink-path rate measured by benches/pipeline.rs at 8 connections x 10 logs)
#   env: CONNECTIONS (8), LOGS_PER_FRAME (10), DURATION (20 s), LINGER (1ms)
set -euo pipefail
cd "$(dirname "$0")/.."
LOGS_PER_S=${1:-850000}
LPF=${LOGS_PER_FRAME:-10}
cargo build --release --quiet --bin boundary-log-proxy --example latency
exec target/release/examples/latency --proxy target/release/boundary-log-proxy \
  --connections "${CONNECTIONS:-8}" --logs-per-frame "$LPF" \
  --rate $(( LOGS_PER_S / LPF )) --seconds "${DURATION:-20}" \
  --linger "${LINGER:-1ms}" 2> >(grep -v '^loadgen: [0-9]* s:' >&2)
