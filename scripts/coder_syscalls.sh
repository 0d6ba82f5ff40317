#!/usr/bin/env bash
# System calls each thread makes while the coder path carries a fixed number of logs:
# `sink --protocol coder --quiet`, `serve --coder-url` to it, an unthrottled loadgen
# (8 connections x FRAMES frames x 10 logs), counted with perf's syscall tracepoints
# (no hardware counters needed) on the proxy and the sink, per thread.
#
# Usage: scripts/coder_syscalls.sh [BIN] [FRAMES]
#   BIN: the boundary-log-proxy binary (default: target/release, built first)
#   FRAMES: frames per connection (default 50000: 4,000,000 logs)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${1:-} ]]; then
    cargo build --release --quiet --bin boundary-log-proxy
fi
BIN=${1:-target/release/boundary-log-proxy}
FRAMES=${2:-50000}
PORT=$((20000 + RANDOM % 10000))
W=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$W"' EXIT
"$BIN" sink --protocol coder --quiet --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
SINK=$!
PIDS+=($SINK)
sleep 0.3
"$BIN" serve --socket "$W/s.sock" --coder-url "http://127.0.0.1:$PORT" --agent-token t >/dev/null 2>"$W/serve.err" &
PROXY=$!
PIDS+=($PROXY)
sleep 0.5
EVENTS=syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_write,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex
perf stat -e "$EVENTS" -p "$PROXY,$SINK" --per-thread -o "$W/stat" 2>/dev/null &
STAT=$!
sleep 0.3
"$BIN" loadgen --socket "$W/s.sock" --connections 8 --frames "$FRAMES" --logs-per-frame 10 >/dev/null 2>&1
sleep 0.5
kill -INT $STAT
wait $STAT 2>/dev/null || true
echo "# $((8 * FRAMES * 10)) logs; proxy pid $PROXY, sink pid $SINK; thread-pid count syscall"
awk 'NF>=3 && $3 ~ /syscalls/ && $2+0>0 {print $1, $2, $3}' "$W/stat" | sed 's/syscalls:sys_enter_//' | sort
