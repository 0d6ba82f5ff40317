#!/usr/bin/env bash
# Every figure of PERF.md in one go (about 20 minutes on 2 cores; run on a quiet
# machine): the criterion pipeline bench, its CSV/table/plot, CPU per log per
# thread, peak RSS under overload, socket-to-sink latency. Outputs go to perf/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p perf
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "nproc: $(nproc)"
  echo "kernel: $(uname -r)"
  echo "cpu: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "memory: $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "rustc: $(rustc --version)"
  echo "commit: $(git rev-parse --short HEAD)"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee perf/machine.txt

cargo bench --bench pipeline --no-run
cargo build --release --bin boundary-log-proxy --example slow_sink --example latency

cargo bench --bench pipeline -- --warm-up-time 2 --measurement-time 6 2>&1 | tee perf/pipeline_bench.txt
python3 scripts/plot.py target/criterion perf | tee perf/pipeline_table.md

for mode in null sink; do
  DURATION=10 scripts/thread_cpu.sh "$mode" 1500000 2>&1 | grep -v ' WARN \| INFO ' | tee "perf/thread_cpu_$mode.txt"
done

LOGS_PER_FRAME=10 scripts/overload_rss.sh perf/overload_rss_l10.csv | tee perf/overload_rss.txt
LOGS_PER_FRAME=100 scripts/overload_rss.sh perf/overload_rss_l100.csv | tee -a perf/overload_rss.txt
LOGS_PER_FRAME=100 RING_CAPACITY=2048 scripts/overload_rss.sh perf/overload_rss_l100_ring2048.csv | tee -a perf/overload_rss.txt

# Half of the peak sink-path rate this run measured (8 connections x 10 logs/frame).
HALF=$(awk -F, '$1 == "pipeline" && $2 == "sink" && $3 == 8 && $4 == 10 {printf "%d", $5 / 2}' perf/pipeline.csv)
echo "latency at half of the measured peak: $HALF logs/s" | tee perf/latency.txt
scripts/latency.sh "$HALF" | tee -a perf/latency.txt
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a perf/machine.txt
