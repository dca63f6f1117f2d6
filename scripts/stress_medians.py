#!/usr/bin/env python3
"""Prints, per thread count and design, the median over several `stress --json` runs.

    for i in 1 2 3; do
        cargo run --release --features cli -- stress --compare --threads 1,2,8,32 \\
            --seconds 1 --json > run$i.json
    done
    python3 scripts/stress_medians.py run*.json

Each run is one process, so ratios are taken inside a run (tokencache's ops/s over the
design's, same thread count) and then the median of those ratios is printed, not the ratio
of medians. BENCHMARKS.md quotes these medians.
"""
import json
import statistics
import sys

if len(sys.argv) < 2:
    sys.exit(__doc__)
runs = [json.load(open(path)) for path in sys.argv[1:]]
keys = []
for row in runs[0]:
    key = (row["threads"], row["design"])
    if key not in keys:
        keys.append(key)


def ns(value):
    if value < 10_000:
        return f"{value:.0f} ns"
    if value < 10_000_000:
        return f"{value / 1e3:.1f} us"
    return f"{value / 1e6:.1f} ms"


def rate(value):
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    if value >= 1e3:
        return f"{value / 1e3:.1f} k"
    return f"{value:.0f}"


print(f"medians of {len(runs)} runs")
print(
    f"{'threads':>7}  {'design':<17} {'ops/s':>9} {'tokencache is':>14} {'p50':>9} {'p99':>9}"
    "  verified"
)
for threads, design in keys:
    ops, ratios, p50s, p99s, verified = [], [], [], [], []
    for run in runs:
        rows = {(r["threads"], r["design"]): r for r in run}
        row = rows.get((threads, design))
        ours = rows.get((threads, "tokencache"))
        if row is None or ours is None:
            sys.exit(f"a run has no row for {design} at {threads} threads")
        ops.append(row["ops_per_sec"])
        ratios.append(ours["ops_per_sec"] / row["ops_per_sec"])
        p50s.append(row["latency_ns"]["p50"])
        p99s.append(row["latency_ns"]["p99"])
        verified.append(row["verified"])
    ratio = statistics.median(ratios)
    shown = "-" if design == "tokencache" else (f"{ratio:.1f}x" if ratio < 100 else f"{ratio:.0f}x")
    print(
        f"{threads:>7}  {design:<17} {rate(statistics.median(ops)):>9} {shown:>14} "
        f"{ns(statistics.median(p50s)):>9} {ns(statistics.median(p99s)):>9}"
        f"  {'all' if all(verified) else 'NOT ALL'}"
    )
