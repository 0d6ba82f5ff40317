#!/usr/bin/env bash
# Disk spool figures for PERF.md, all in one run on one directory:
#  1. the disk's own sequential write speed (dd, same block size as a spool record,
#     same fsync policy: oflag=dsync for `always`, one fdatasync at the end for
#     `interval`);
#  2. spool write, recovery scan and replay throughput, storage alone
#     (examples/spool_throughput.rs), for both policies;
#  3. end-to-end replay through the binary: a proxy with coderd down spools LOGS
#     logs, stops; a second proxy with a quiet gRPC sink replays them; the time from
#     its start to spool_logs == 0;
#  4. the null-path throughput (loadgen -> serve --sink null) with the spool off and
#     with it on but idle, RUNS times each, alternating.
#
# Usage: scripts/spool_perf.sh [DIR]   (default: a temp dir under $TMPDIR)
#   env: RECORDS (2000), LOGS_PER_RECORD (1000), ALWAYS_RECORDS (500), LOGS (500000),
#        RUNS (3), FRAMES (200000 per connection), CONNECTIONS (8), LOGS_PER_FRAME (10)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-$(mktemp -d)}
mkdir -p "$DIR"
RECORDS=${RECORDS:-2000}
LPR=${LOGS_PER_RECORD:-1000}
ALWAYS_RECORDS=${ALWAYS_RECORDS:-500}
LOGS=${LOGS:-500000}
RUNS=${RUNS:-3}
FRAMES=${FRAMES:-200000}
CONNS=${CONNECTIONS:-8}
LPF=${LOGS_PER_FRAME:-10}
cargo build --release --quiet --bin boundary-log-proxy --example spool_throughput
BIN=target/release/boundary-log-proxy
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

echo "# filesystem of $DIR"
df -hT "$DIR" | tail -1
# A record of LPR logs as the example writes it (48-byte header + request).
REC=$(target/release/examples/spool_throughput "$DIR/probe" --records 1 --logs-per-record "$LPR" | awk -F, '/^write/ { print $5 }')
echo "# record size: $REC bytes ($LPR logs)"

echo "# dd: phase,fsync,records,bytes,seconds,MB_per_s"
dd_run() { # policy count flags...
  local policy=$1 count=$2; shift 2
  local out
  out=$(dd if=/dev/zero of="$DIR/dd.bin" bs="$REC" count="$count" "$@" 2>&1 | tail -1)
  rm -f "$DIR/dd.bin"
  echo "$out" | awk -v p="$policy" -v c="$count" -v b=$((REC * count)) \
    '{ for (i = 1; i <= NF; i++) if ($(i) == "s,") s = $(i-1); printf "dd,%s,%s,%s,%s,%.1f\n", p, c, b, s, b / s / 1e6 }'
}
dd_run interval "$RECORDS" conv=fdatasync
dd_run always "$ALWAYS_RECORDS" oflag=dsync

echo "# spool: phase,fsync,records,logs,bytes,seconds,MB_per_s,logs_per_s"
target/release/examples/spool_throughput "$DIR/spool" --fsync interval --records "$RECORDS" --logs-per-record "$LPR"
target/release/examples/spool_throughput "$DIR/spool" --fsync always --records "$ALWAYS_RECORDS" --logs-per-record "$LPR"

scrape() { # port metric -> value
  curl -s "http://127.0.0.1:$1/metrics" | awk -v m="agent_boundary_log_proxy_$2" '$1 == m { print $2 }'
}
wait_for() { # port metric value
  for _ in $(seq 6000); do
    v=$(scrape "$1" "$2" || true)
    [[ -n $v && ${v%.*} -ge $3 ]] && return 0
    sleep 0.01
  done
  echo "timeout waiting for $2 >= $3" >&2; return 1
}

echo "# end-to-end replay: logs,seconds,logs_per_s,MB_per_s (spool bytes / seconds)"
rm -rf "$DIR/e2e"; mkdir -p "$DIR/e2e"
SINK_PORT=$((20000 + RANDOM % 20000)); M1=$((SINK_PORT + 1)); M2=$((SINK_PORT + 2))
"$BIN" serve --socket "$DIR/e2e/p.sock" --coderd "http://127.0.0.1:$SINK_PORT" \
  --spool-dir "$DIR/e2e/spool" --metrics-addr "127.0.0.1:$M1" --log-level error &
P1=$!; PIDS+=($P1)
for _ in $(seq 200); do [[ -S $DIR/e2e/p.sock ]] && break; sleep 0.05; done
"$BIN" loadgen --socket "$DIR/e2e/p.sock" --connections "$CONNS" --logs-per-frame "$LPF" \
  --frames $(( LOGS / LPF / CONNS )) --rate 200000 >/dev/null 2>&1
wait_for "$M1" logs_spooled_total $(( LOGS / LPF / CONNS * LPF * CONNS ))
SPOOLED=$(scrape "$M1" spool_logs); BYTES=$(scrape "$M1" spool_bytes)
kill -TERM $P1; wait $P1 || true
"$BIN" sink --listen "127.0.0.1:$SINK_PORT" --quiet >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.5
START=$(date +%s.%N)
"$BIN" serve --socket "$DIR/e2e/p2.sock" --coderd "http://127.0.0.1:$SINK_PORT" \
  --spool-dir "$DIR/e2e/spool" --metrics-addr "127.0.0.1:$M2" --log-level error &
P2=$!; PIDS+=($P2)
wait_for "$M2" logs_replayed_total "${SPOOLED%.*}"
END=$(date +%s.%N)
kill -TERM $P2; wait $P2 || true
awk -v l="${SPOOLED%.*}" -v b="${BYTES%.*}" -v s="$START" -v e="$END" \
  'BEGIN { d = e - s; printf "e2e_replay,%d,%.3f,%.0f,%.1f\n", l, d, l / d, b / d / 1e6 }'

echo "# null path: spool,run,loadgen summary"
null_run() { # label extra-args...
  local label=$1; shift
  rm -rf "$DIR/null"; mkdir -p "$DIR/null"
  "$BIN" serve --socket "$DIR/null/p.sock" --sink null --log-level error "$@" &
  local p=$!; PIDS+=($p)
  for _ in $(seq 200); do [[ -S $DIR/null/p.sock ]] && break; sleep 0.05; done
  local out
  out=$("$BIN" loadgen --socket "$DIR/null/p.sock" --connections "$CONNS" \
    --logs-per-frame "$LPF" --frames "$FRAMES" 2>/dev/null)
  kill -TERM $p; wait $p || true
  echo "$label,$out"
}
for run in $(seq "$RUNS"); do
  null_run "off,$run"
  null_run "idle,$run" --spool-dir "$DIR/null-spool"
done
rm -rf "$DIR/null" "$DIR/null-spool" "$DIR/e2e"
