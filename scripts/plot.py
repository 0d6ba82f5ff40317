#!/usr/bin/env python3
"""Throughput of `benches/pipeline.rs` from criterion's JSON output.

Writes perf/pipeline.csv (one row per benchmark: logs/s as criterion prints it) and perf/pipeline.png (logs/s against connections, one line per path and
logs per frame), and prints a Markdown table with the ratios of the same run.

Usage: python3 scripts/plot.py [CRITERION_DIR] [OUT_DIR]
       (defaults: target/criterion perf; needs matplotlib: pip install matplotlib)
"""
import csv
import json
import pathlib
import sys

CRITERION = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
OUT = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "perf")
PATHS = ["null", "sink", "baseline"]
# The same paths with the receiver that counts logs without decoding them.
COUNTING = ["sinkcount", "baselinecount"]
CONNECTIONS = [1, 8, 64]
LOGS_PER_FRAME = [10, 100]


def throughput(group, function, parameter):
    """(logs/s, low, high): criterion's typical estimate (the slope of its linear
    sampling, what it prints; the mean otherwise) and its confidence interval."""
    base = CRITERION / group / function / str(parameter) / "new"
    try:
        bench = json.loads((base / "benchmark.json").read_text())
        estimates = json.loads((base / "estimates.json").read_text())
        est = estimates.get("slope") or estimates["mean"]
    except FileNotFoundError:
        return None
    elements = bench["throughput"]["Elements"]
    per_s = lambda ns: elements / (ns / 1e9)
    ci = est["confidence_interval"]
    return per_s(est["point_estimate"]), per_s(ci["upper_bound"]), per_s(ci["lower_bound"])


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for lpf in LOGS_PER_FRAME:
        for conns in CONNECTIONS:
            for path in PATHS + COUNTING + ["sink64k"]:
                t = throughput("pipeline", path, f"c{conns}_l{lpf}")
                if t:
                    rows.append(("pipeline", path, conns, lpf, *t))
    for idle in [0, 10000]:
        t = throughput("idle_connections", "null_c8_l10", idle)
        if t:
            rows.append(("idle_connections", f"null+{idle}idle", 8, 10, *t))
    with open(OUT / "pipeline.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "path", "connections", "logs_per_frame", "logs_per_s", "ci_low", "ci_high"])
        for r in rows:
            w.writerow([*r[:4], *(f"{x:.0f}" for x in r[4:])])

    get = {(r[1], r[2], r[3]): r[4] for r in rows}
    print("| connections | logs/frame | null (M logs/s) | sink (M logs/s) | sink/null | baseline (M logs/s) | sink/baseline | null/baseline |")
    print("|---|---|---|---|---|---|---|---|")
    for lpf in LOGS_PER_FRAME:
        for conns in CONNECTIONS:
            n, s, b = (get.get((p, conns, lpf)) for p in PATHS)
            fmt = lambda v: f"{v / 1e6:.2f}" if v else "-"
            ratio = lambda a, c: f"{a / c:.2f}" if a and c else "-"
            print(f"| {conns} | {lpf} | {fmt(n)} | {fmt(s)} | {ratio(s, n)} | {fmt(b)} | {ratio(s, b)} | {ratio(n, b)} |")
    if any(get.get((p, c, l)) for p in COUNTING for c in CONNECTIONS for l in LOGS_PER_FRAME):
        print("\nWith the counting receiver (no decoding on the receiving side):\n")
        print("| connections | logs/frame | sinkcount (M logs/s) | sinkcount/null | baselinecount (M logs/s) | sinkcount/baselinecount | sinkcount/sink |")
        print("|---|---|---|---|---|---|---|")
        for lpf in LOGS_PER_FRAME:
            for conns in CONNECTIONS:
                n, s, sc, bc = (get.get((p, conns, lpf)) for p in ["null", "sink", *COUNTING])
                fmt = lambda v: f"{v / 1e6:.2f}" if v else "-"
                ratio = lambda a, c: f"{a / c:.2f}" if a and c else "-"
                print(f"| {conns} | {lpf} | {fmt(sc)} | {ratio(sc, n)} | {fmt(bc)} | {ratio(sc, bc)} | {ratio(sc, s)} |")
    for lpf in LOGS_PER_FRAME:
        big, small = get.get(("sink", 8, lpf)), get.get(("sink64k", 8, lpf))
        if big and small:
            print(f"\nsink with 64 KiB HTTP/2 windows, 8 x {lpf}: {small / 1e6:.2f} M logs/s "
                  f"({small / big:.2f} of the 4 MiB-window sink)")
    idle = [get.get((f"null+{i}idle", 8, 10)) for i in (0, 10000)]
    if all(idle):
        print(f"\nidle connections (null, 8 x 10): 0 idle {idle[0] / 1e6:.2f} M logs/s, "
              f"10000 idle {idle[1] / 1e6:.2f} M logs/s, ratio {idle[1] / idle[0]:.3f}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6))
    colours = {"null": "tab:blue", "sink": "tab:green", "baseline": "tab:red",
               "sinkcount": "tab:olive", "baselinecount": "tab:orange"}
    styles = {10: "-", 100: "--"}
    for path in PATHS + COUNTING:
        for lpf in LOGS_PER_FRAME:
            pts = [(c, get[(path, c, lpf)]) for c in CONNECTIONS if (path, c, lpf) in get]
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, [y / 1e6 for y in ys], styles[lpf], marker="o", color=colours[path],
                    label=f"{path}, {lpf} logs/frame")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(CONNECTIONS)
    ax.set_xticklabels([str(c) for c in CONNECTIONS])
    ax.set_xlabel("connections")
    ax.set_ylabel("million logs/s (log scale)")
    ax.set_title("boundary-log-proxy end to end, 2 cores (benches/pipeline.rs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    fig.savefig(OUT / "pipeline.png", dpi=110)
    print(f"\nwrote {OUT / 'pipeline.csv'} and {OUT / 'pipeline.png'}")


if __name__ == "__main__":
    main()
