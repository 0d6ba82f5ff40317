#!/usr/bin/env bash
# CPU time each thread of `serve` spends per log at a fixed offered load: runs
# serve (null sink, or --coderd to an in-tree quiet sink) and a rate-limited
# loadgen, and reads utime+stime of every thread from /proc before and after.
#
# Usage: scripts/thread_cpu.sh [null|sink] [LOGS_PER_S]
#   env: CONNECTIONS (8), LOGS_PER_FRAME (10), DURATION (10), IO (auto)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-null}
LOGS_PER_S=${2:-3000000}
CONNS=${CONNECTIONS:-8}
LPF=${LOGS_PER_FRAME:-10}
DURATION=${DURATION:-10}
cargo build --release --quiet --bin boundary-log-proxy
BIN=target/release/boundary-log-proxy
W=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$W"' EXIT
if [[ $MODE == sink ]]; then
  PORT=$((20000 + RANDOM % 20000))
  "$BIN" sink --listen 127.0.0.1:$PORT --quiet >/dev/null &
  PIDS+=($!); SINKPID=$!
  DEST=(--coderd http://127.0.0.1:$PORT)
else
  DEST=(--sink null)
fi
"$BIN" serve --socket "$W/p.sock" "${DEST[@]}" --io "${IO:-auto}" --log-level warn &
PROXY=$!; PIDS+=($PROXY)
for _ in $(seq 100); do [[ -S $W/p.sock ]] && break; sleep 0.05; done
snapshot() { # pid -> "name ticks" per thread, summed by name
  for t in /proc/$1/task/*; do
    awk '{ name = $2; gsub(/[()]/, "", name); print name, $14 + $15 }' "$t/stat"
  done | awk '{ s[$1] += $2 } END { for (n in s) print n, s[n] }' | sort
}
HZ=$(getconf CLK_TCK)
RATE=$(( LOGS_PER_S / LPF ))
"$BIN" loadgen --socket "$W/p.sock" --connections "$CONNS" --logs-per-frame "$LPF" \
  --rate "$RATE" --frames $(( RATE * (DURATION + 2) / CONNS )) >"$W/lg.out" 2>/dev/null &
LG=$!; PIDS+=($LG)
sleep 1
snapshot $PROXY >"$W/a"; [[ $MODE == sink ]] && snapshot $SINKPID | sed 's/^/sink:/' >>"$W/a"
sleep "$DURATION"
snapshot $PROXY >"$W/b"; [[ $MODE == sink ]] && snapshot $SINKPID | sed 's/^/sink:/' >>"$W/b"
wait $LG || true
cat "$W/lg.out"
echo "thread,cpu_share_of_one_core,ns_per_log at $LOGS_PER_S logs/s offered"
join "$W/a" "$W/b" | awk -v hz="$HZ" -v d="$DURATION" -v r="$LOGS_PER_S" \
  '{ cpu = ($3 - $2) / hz / d; printf "%s,%.3f,%.0f\n", $1, cpu, cpu * 1e9 / r }'
