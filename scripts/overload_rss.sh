#!/usr/bin/env bash
# Peak RSS of `serve` under sustained overload: loadgen offers OVERLOAD times what a
# slow sink accepts, for DURATION seconds; VmRSS and VmHWM of the proxy are sampled
# from /proc/PID/status every second into a CSV, with the proxy's drop counters.
#
# Usage: scripts/overload_rss.sh [OUT.csv]
#   env: LOGS_PER_FRAME (10), CONNECTIONS (8), SINK_RATE logs/s (100000),
#        OVERLOAD (10; "max" writes as fast as loadgen can), DURATION s (60),
#        RING_CAPACITY (default of serve), IO (auto)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-perf/overload_rss.csv}
LPF=${LOGS_PER_FRAME:-10}
CONNS=${CONNECTIONS:-8}
SINK_RATE=${SINK_RATE:-100000}
OVERLOAD=${OVERLOAD:-10}
DURATION=${DURATION:-60}
IO=${IO:-auto}
EXTRA=()
if [[ -n "${RING_CAPACITY:-}" ]]; then EXTRA+=(--ring-capacity "$RING_CAPACITY"); fi

cargo build --release --quiet --bin boundary-log-proxy --example slow_sink
BIN=target/release/boundary-log-proxy
SINK=target/release/examples/slow_sink

WORK=$(mktemp -d)
SOCK=$WORK/proxy.sock
METRICS=127.0.0.1:$((20000 + RANDOM % 20000))
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$SINK" --listen 127.0.0.1:0 --logs-per-second "$SINK_RATE" >"$WORK/sink.out" &
PIDS+=($!)
for _ in $(seq 100); do grep -q '^listening' "$WORK/sink.out" 2>/dev/null && break; sleep 0.05; done
URL=$(awk '/^listening/ {print $2; exit}' "$WORK/sink.out")

"$BIN" serve --socket "$SOCK" --coderd "$URL" --metrics-addr "$METRICS" --io "$IO" \
  --log-level warn "${EXTRA[@]}" 2>"$WORK/proxy.err" &
PROXY=$!
PIDS+=($PROXY)
for _ in $(seq 100); do [[ -S $SOCK ]] && break; sleep 0.05; done

# Offered load in frames/s; frames per connection for DURATION seconds.
if [[ $OVERLOAD == max ]]; then
  RATE=$(( 6000000 / LPF ))   # about what loadgen writes unthrottled here; the run ends early
  RATE_FLAG=()
else
  RATE=$(( SINK_RATE * OVERLOAD / LPF ))
  RATE_FLAG=(--rate "$RATE")
fi
FRAMES=$(( RATE * DURATION / CONNS ))
"$BIN" loadgen --socket "$SOCK" --connections "$CONNS" --frames "$FRAMES" \
  --logs-per-frame "$LPF" "${RATE_FLAG[@]}" >"$WORK/loadgen.out" 2>"$WORK/loadgen.err" &
LOADGEN=$!
PIDS+=($LOADGEN)

metric() { # name [label] -> value
  curl -s "http://$METRICS/metrics" | awk -v m="$1" -v l="${2:-}" \
    '$1 ~ "^"m && index($1, l) {v=$2} END {print v+0}'
}

mkdir -p "$(dirname "$OUT")"
echo "second,vmrss_kib,vmhwm_kib,logs_received,logs_forwarded,logs_dropped_buffer_full,ring_occupancy" >"$OUT"
for t in $(seq 0 $((DURATION + 2))); do
  rss=$(awk '/^VmRSS/ {print $2}' /proc/$PROXY/status)
  hwm=$(awk '/^VmHWM/ {print $2}' /proc/$PROXY/status)
  echo "$t,$rss,$hwm,$(metric agent_boundary_log_proxy_logs_received_total),$(metric agent_boundary_log_proxy_logs_forwarded_total),$(metric agent_boundary_log_proxy_logs_dropped_total buffer_full),$(metric agent_boundary_log_proxy_ring_occupancy)" >>"$OUT"
  sleep 1
done
wait "$LOADGEN" || true
cat "$WORK/loadgen.out"
awk -F, 'NR > 1 { if ($3 > peak) peak = $3; last = $2 } END {
  printf "peak VmHWM %.1f MiB, last VmRSS %.1f MiB\n", peak / 1024, last / 1024 }' "$OUT"
echo "offered $((RATE * LPF)) logs/s to a sink accepting $SINK_RATE logs/s; CSV: $OUT"
