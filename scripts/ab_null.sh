#!/usr/bin/env bash
# Alternating comparison of proxy builds (or flags) on the null reporter with the
# out-of-process harness (examples/e2e_bench.rs): each round runs every
# configuration once, so a slow spell of the host hits them all alike.
#
# Usage: scripts/ab_null.sh ROUNDS NAME=BINARY[,PROXY_ARG] ...
#   e.g. scripts/ab_null.sh 8 old=/tmp/blp-old new=target/release/boundary-log-proxy \
#            epoll=target/release/boundary-log-proxy,--io=epoll
# Prints one line a run (name, delivered M logs/s, proxy CPU ns/log, writer CPU
# ns/log), then each configuration's sorted CPU figures and medians.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=$1
shift
cargo build --release --quiet --example e2e_bench
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for _ in $(seq 1 "$ROUNDS"); do
  for cfg in "$@"; do
    name=${cfg%%=*}
    rest=${cfg#*=}
    bin=${rest%%,*}
    args=(--reporter null --runs 1 --bin "$bin")
    if [[ $rest == *,* ]]; then args+=("--proxy-arg=${rest#*,}"); fi
    target/release/examples/e2e_bench "${args[@]}" 2>&1 | grep -E ' Null:' |
      sed -E "s/.*: ([0-9.]+) M delivered logs\/s; proxy CPU ([0-9]+) ns\/log.*writer ([0-9]+) ns.*/$name \1 \2 \3/" |
      tee -a "$out"
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
