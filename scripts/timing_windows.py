#!/usr/bin/env python3
"""Reads e2e_bench's output of a proxy built with perf/validation_timing.patch and prints
the validation cost in ns per log of each 100 ms window of at least 200,000 logs (from the
proxy's `TIMING` lines), with the round's one-thread references beside them. A proxy built
with perf/validation_timing_reference.patch also prints (`REFERENCE` lines) the same
measurement on its own reader thread, over pre-built frames, before its first read.

Usage: target/release/examples/e2e_bench --bin PATCHED --reporter null --logs 12000000 \\
           2>&1 | python3 scripts/timing_windows.py
"""
import statistics
import sys

prev = None
windows = []
for line in sys.stdin:
    if line.startswith("TIMING"):
        fields = dict(kv.split("=") for kv in line.split()[1:])
        ns, logs = float(fields["validation_ns"]), int(fields["logs"])
        if prev and logs - prev[1] >= 200_000:
            windows.append((ns - prev[0]) / (logs - prev[1]))
        prev = (ns, logs)
    elif "reference on one thread" in line or " Null:" in line or line.startswith("REFERENCE"):
        print(line.strip()[:240])
if windows:
    print("validation in the pipeline, ns/log per window:", " ".join(f"{w:.0f}" for w in windows))
    print(f"windows {len(windows)}, median {statistics.median(windows):.1f}, "
          f"min {min(windows):.1f}, max {max(windows):.1f}")
