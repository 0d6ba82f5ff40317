#!/usr/bin/env bash
# Does the disk spool's replay catch up after an outage? (PERF.md section 9)
# loadgen writes 2,000 logs/s (400 frames/s of 5 logs) over CONNECTIONS connections
# (one session each, 120,000 logs in all) to `serve --spool-dir`; coderd (`sink
# --quiet`, gRPC) is unreachable for the first 10 s, then reachable through a relay
# that delays each of its answers by DELAY seconds. Prints the proxy's counters every
# 5 s and its `stopped` line.
#
# Usage: scripts/spool_catchup.sh [CONNECTIONS] [DELAY]   (defaults 2, 0.05)
#        BIN=path/to/boundary-log-proxy to test another build; PORT_BASE moves the
#        three TCP ports (default 50180: sink, relay = +100, metrics = +200).
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-2}
delay=${2:-0.05}
base=${PORT_BASE:-50180}
sink_port=$base relay_port=$((base + 100)) metrics_port=$((base + 200))
if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet --bin boundary-log-proxy
  BIN="${CARGO_TARGET_DIR:-target}/release/boundary-log-proxy"
fi
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$BIN" sink --listen "127.0.0.1:$sink_port" --quiet > "$work/sink.log" 2>&1 & pids+=($!)
"$BIN" serve --socket "$work/proxy.sock" --coderd "http://127.0.0.1:$relay_port" \
  --metrics-addr "127.0.0.1:$metrics_port" --spool-dir "$work/spool" \
  --spool-max-bytes 4000000 > "$work/proxy.log" 2>&1 & proxy=$!
sleep 1
"$BIN" loadgen --socket "$work/proxy.sock" --connections "$conns" \
  --frames $((24000 / conns)) --logs-per-frame 5 --rate $((400 / conns)) \
  > "$work/loadgen.log" 2>&1 & loadgen=$!
sleep 10
# The relay: coderd's answers delayed by DELAY seconds each read.
python3 - "$relay_port" "$sink_port" "$delay" <<'PY' & pids+=($!)
import asyncio, sys
listen, upstream, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
async def pipe(reader, writer, pause):
    try:
        while data := await reader.read(65536):
            if pause:
                await asyncio.sleep(pause)
            writer.write(data)
            await writer.drain()
    except Exception:
        pass
    finally:
        writer.close()
async def handle(client_r, client_w):
    try:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", upstream)
    except Exception:
        client_w.close()
        return
    await asyncio.gather(pipe(client_r, up_w, 0), pipe(up_r, client_w, delay))
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()
asyncio.run(main())
PY
for t in 5 10 15 20 25; do
  sleep 5
  echo "coderd back $t s: $(curl -s "127.0.0.1:$metrics_port/metrics" |
    grep -E '^agent_boundary_log_proxy_(spool_logs|logs_forwarded_total|logs_dropped_total\{reason="(buffer_full|spool_full)"\})' |
    sed 's/agent_boundary_log_proxy_//' | tr '\n' ' ')"
done
wait "$loadgen"
sleep 3
kill "$proxy"
wait "$proxy" || true
grep 'stopped' "$work/proxy.log" | tail -1
