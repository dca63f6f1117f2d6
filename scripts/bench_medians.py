#!/usr/bin/env python3
"""Prints the median of every criterion benchmark under target/criterion (newest run), with
its spread: the lowest and highest quarter of the samples cut off (the interquartile range).

    cargo bench --bench store && python3 scripts/bench_medians.py [filter]

Criterion's console line shows a confidence interval of the mean; BENCHMARKS.md quotes
medians, which one slow sample on a shared machine moves less. Each sample is the mean time
of one or more iterations (`sample.json`), so the range is of those means, not of single
calls.
"""
import json
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent / "target" / "criterion"
want = sys.argv[1] if len(sys.argv) > 1 else ""


def time(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.1f} ms"
    if ns >= 1e4:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:.1f} ns"


def quartiles(values):
    """The 25th and 75th percentiles, interpolated."""
    values = sorted(values)

    def at(q):
        pos = (len(values) - 1) * q
        low = int(pos)
        high = min(low + 1, len(values) - 1)
        return values[low] + (values[high] - values[low]) * (pos - low)

    return at(0.25), at(0.75)


rows = []
for estimates in sorted(root.glob("**/new/estimates.json")):
    bench = json.loads((estimates.parent / "benchmark.json").read_text())
    name = bench["full_id"]
    if want not in name:
        continue
    median_ns = json.loads(estimates.read_text())["median"]["point_estimate"]
    sample = json.loads((estimates.parent / "sample.json").read_text())
    per_iter = [t / n for t, n in zip(sample["times"], sample["iters"])]
    q1, q3 = quartiles(per_iter)
    spread = f"{time(q1)} - {time(q3)} ({len(per_iter)} samples)"
    throughput = bench.get("throughput") or {}
    elements = throughput.get("Elements")
    rate = elements / median_ns * 1e9 if elements else None
    if rate is None:
        per_sec = ""
    elif rate >= 1e6:
        per_sec = f"{rate / 1e6:10.2f} M/s"
    else:
        per_sec = f"{rate:10.0f} /s"
    rows.append((name, median_ns, per_sec, spread))
if not rows:
    sys.exit(f"no criterion results under {root}; run `cargo bench` first")
print(f"{'bench':42} {'median':>12} {'rate':>13}  interquartile range")
for name, ns, per_sec, spread in rows:
    print(f"{name:42} {time(ns):>12} {per_sec:>13}  {spread}")
