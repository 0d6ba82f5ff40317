#!/usr/bin/env python3
"""Reads e2e_bench's output of a side-by-side run (`--reporter null,grpc,coder`) and
prints, per round, PERF.md's table row (the prost reference; each reporter's delivered
M logs/s, proxy CPU ns/log, its sink's ns/log and logs a call; the machine's busy share;
the drops), then issue 12's two ratios over the rounds: the coder path's rate against
the null path's (target >= 0.5) and its proxy CPU per log against the gRPC path's
(target <= 1).

Usage: python3 scripts/e2e_ratios.py perf/e2e_NAME.txt
"""
import re
import statistics
import sys

REFERENCE = re.compile(r"round (\d+): reference on one thread: prost decode (\d+)")
RUN = re.compile(
    r"round (\d+) (\w+): .*?(\d+) dropped \((\d+) buffer_full\)"
    r".*?(?:, (\d+) requests \((\d+) logs each\))?; written"
    r".*?: ([\d.]+) M delivered logs/s; proxy CPU (\d+) ns/log"
    r".*?writer (\d+) ns/log(?:; sink (\d+) ns/log)?; machine (\d+)% busy"
)


def main(path):
    refs, rows = {}, {}
    with open(path) as f:
        for line in f:
            if m := REFERENCE.match(line):
                refs[int(m[1])] = m[2]
            elif m := RUN.match(line):
                rows.setdefault(int(m[1]), {})[m[2]] = m
    print(
        "| round | prost ns/log | null M logs/s | proxy ns/log | writer ns/log "
        "| gRPC M logs/s | proxy ns/log | its sink | logs a call "
        "| coder M logs/s | proxy ns/log | its sink | logs a call "
        "| coder / null rate | coder / gRPC proxy CPU | busy null / gRPC / coder | dropped |"
    )
    print("|" + "---|" * 17)
    rates, cpus = [], []
    for r in sorted(rows):
        n, g, c = rows[r]["Null"], rows[r]["Grpc"], rows[r]["Coder"]
        rate = float(c[7]) / float(n[7])
        cpu = float(c[8]) / float(g[8])
        rates.append(rate)
        cpus.append(cpu)
        print(
            f"| {r} | {refs.get(r, '?')} | {n[7]} | {n[8]} | {n[9]} "
            f"| {g[7]} | {g[8]} | {g[10]} | {g[6]} | {c[7]} | {c[8]} | {c[10]} | {c[6]} "
            f"| {rate:.3f} | {cpu:.2f} | {n[11]} / {g[11]} / {c[11]}% | {n[3]} / {g[3]} / {c[3]} |"
        )
    print(
        f"coder / null rate {min(rates):.3f}-{max(rates):.3f}, median {statistics.median(rates):.3f}, "
        f">= 0.5 in {sum(x >= 0.5 for x in rates)} of {len(rates)}; "
        f"coder / gRPC proxy CPU {min(cpus):.2f}-{max(cpus):.2f}, <= 1 in {sum(x <= 1 for x in cpus)} of {len(cpus)}"
    )


if __name__ == "__main__":
    main(sys.argv[1])
