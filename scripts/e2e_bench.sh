#!/usr/bin/env bash
# Out-of-process end-to-end benchmark (examples/e2e_bench.rs): the release binary's
# serve, a writer process, and (gRPC/coder) the binary's sink, each its own process.
# Prints delivered logs/s, drops and the proxy's CPU ns per log, per run, and keeps
# the output in perf/.
#
# Usage: scripts/e2e_bench.sh [NAME] [e2e_bench args...]
#   e.g. scripts/e2e_bench.sh null_c8_l10 --reporter null --runs 5
#        scripts/e2e_bench.sh side_by_side --reporter null,grpc,coder
#        scripts/e2e_bench.sh loadgen --writer loadgen
# Output: perf/e2e_NAME.txt (the printed lines) and perf/e2e_NAME.csv (one row a run).
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:-run}
shift || true
cargo build --release --quiet --bin boundary-log-proxy --example e2e_bench
mkdir -p perf
{
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty') load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# scripts/e2e_bench.sh $NAME $*"
  target/release/examples/e2e_bench --csv "perf/e2e_$NAME.csv" "$@"
} 2>&1 | tee "perf/e2e_$NAME.txt"
