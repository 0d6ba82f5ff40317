#!/usr/bin/env bash
# Alternating comparison of proxy builds (or flags) on the null reporter with the
# out-of-process harness (examples/e2e_bench.rs): each round runs every
# configuration once, in an order rotated from round to round, so a slow spell of
# the host hits them all alike.
#
# Usage: [E2E_ARGS="..."] scripts/ab_null.sh ROUNDS NAME=BINARY[,PROXY_ARG] ...
#   e.g. scripts/ab_null.sh 8 old=/tmp/blp-old new=target/release/boundary-log-proxy \
#            epoll=target/release/boundary-log-proxy,--io=epoll
#        E2E_ARGS="--connections 256" scripts/ab_null.sh 3 old=/tmp/blp-old new=/tmp/blp-new
# (this repository's own binary is built first, in target/ or $CARGO_TARGET_DIR).
# Prints one line a run (name, delivered M logs/s, proxy CPU ns/log, writer CPU
# ns/log), then each configuration's sorted CPU figures and medians. A run that
# fails stops the script with e2e_bench's output.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=$1
shift
cargo build --release --quiet --bin boundary-log-proxy --example e2e_bench
bench="${CARGO_TARGET_DIR:-target}/release/examples/e2e_bench"
read -r -a extra <<< "${E2E_ARGS:-}"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
configs=("$@")
for round in $(seq 0 $((ROUNDS - 1))); do
  for i in "${!configs[@]}"; do
    cfg=${configs[$(((i + round) % ${#configs[@]}))]}
    name=${cfg%%=*}
    rest=${cfg#*=}
    bin=${rest%%,*}
    args=(--reporter null --runs 1 --bin "$bin" "${extra[@]}")
    if [[ $rest == *,* ]]; then args+=("--proxy-arg=${rest#*,}"); fi
    run=$("$bench" "${args[@]}" 2>&1) || { echo "$run" >&2; exit 1; }
    line=$(grep -E ' Null:' <<< "$run" |
      sed -E "s/.*: ([0-9.]+) M delivered logs\/s; proxy CPU ([0-9]+) ns\/log.*writer ([0-9]+) ns.*/$name \1 \2 \3/") ||
      { echo "$run" >&2; exit 1; }
    echo "$line" | tee -a "$out"
  done
done
python3 - "$out" <<'EOF'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, rate, cpu, _writer = line.split()
    runs[name].append((float(rate), int(cpu)))
for name, rows in runs.items():
    cpu = sorted(c for _, c in rows)
    rate = statistics.median(r for r, _ in rows)
    print(f"{name}: proxy ns/log {cpu}, median {statistics.median(cpu)}; median {rate:.2f} M logs/s")
EOF
