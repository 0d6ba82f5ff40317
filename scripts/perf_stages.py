#!/usr/bin/env python3
"""Splits a `perf record` profile of `serve` (scripts/e2e_bench.sh --perf-record)
into the pipeline's stages and converts each share into ns of CPU per log.

Usage: scripts/perf_stages.py PERF_DATA NS_PER_LOG
  NS_PER_LOG: the proxy's CPU per log measured in the same run (e2e_bench prints it).

Stages (by thread, then symbol; inlined code counts where it was inlined):
  reader      the reader thread's kernel time (socket receive copy, io_uring,
              waking writers) and the io_uring loop itself
  framing     cutting frames: FrameDecoder, the copy into the frame arena
              (libc memmove on the reader thread), Bytes and malloc/free
  validation  the codec's validating walk (codec::scan, codec::wire, codec::message)
  intake      per-frame bookkeeping: sequence tracker, metrics events, clock,
              the ring push (Producer::push is inlined into Intake)
  forwarder   the drain thread: ring drain, coalescing, request copy, sleeps
  runtime     the tokio threads: delivery to the reporter, metrics, wake-ups
"""
import re
import subprocess
import sys
from collections import defaultdict

RULES = [
    ("validation", r"codec::scan|codec::wire|codec::message|from_utf8|is_ascii"),
    ("framing", r"FrameDecoder|bytes::|BytesMut|memmove|memcpy|malloc|_int_free|cfree|free$|alloc::"),
    ("intake", r"intake::|seqgap|events::|metrics|prometheus|clock_gettime|Timespec|ring::|Instant|hash|Hasher|sip"),
    ("reader", r".*"),
]


def stage(comm, sym, kernel):
    if comm.startswith("blp-forwarder"):
        return "forwarder"
    if comm.startswith("blp-uring") or comm.startswith("blp-epoll"):
        if kernel:
            return "reader"
        for name, pattern in RULES:
            if re.search(pattern, sym):
                return name
    return "runtime"


def main():
    data, ns_per_log = sys.argv[1], float(sys.argv[2])
    out = subprocess.run(
        ["perf", "report", "-i", data, "--no-children", "--sort", "comm,sym",
         "-g", "none", "--stdio", "--field-separator=\t", "-F", "overhead,comm,sym"],
        capture_output=True, text=True, check=True).stdout
    shares = defaultdict(float)
    top = defaultdict(lambda: defaultdict(float))
    for line in out.splitlines():
        if line.startswith("#") or "\t" not in line:
            continue
        overhead, comm, sym = (f.strip() for f in line.split("\t")[:3])
        share = float(overhead.rstrip("%"))
        kernel = sym.startswith("[k]")
        name = stage(comm, sym, kernel)
        shares[name] += share
        top[name][sym[4:]] += share
    total = sum(shares.values())
    print(f"stage,share_of_proxy_cpu,ns_per_log (of {ns_per_log:.0f}),top symbols")
    for name in ["reader", "framing", "validation", "intake", "forwarder", "runtime"]:
        s = shares.get(name, 0.0) / total
        syms = sorted(top[name].items(), key=lambda kv: -kv[1])[:3]
        names = "; ".join(f"{k[:50]} {v / total * 100:.1f}%" for k, v in syms)
        print(f"{name},{s * 100:.1f}%,{s * ns_per_log:.0f},{names}")


if __name__ == "__main__":
    main()
