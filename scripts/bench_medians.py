#!/usr/bin/env python3
"""Prints the median of every criterion benchmark under target/criterion (newest run).

    cargo bench --bench store && python3 scripts/bench_medians.py [filter]

Criterion's console line shows a confidence interval of the mean; BENCHMARKS.md quotes
medians, which one slow sample on a shared machine moves less.
"""
import json
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent / "target" / "criterion"
want = sys.argv[1] if len(sys.argv) > 1 else ""
rows = []
for estimates in sorted(root.glob("**/new/estimates.json")):
    bench = json.loads((estimates.parent / "benchmark.json").read_text())
    name = bench["full_id"]
    if want not in name:
        continue
    median_ns = json.loads(estimates.read_text())["median"]["point_estimate"]
    throughput = bench.get("throughput") or {}
    elements = throughput.get("Elements")
    rate = elements / median_ns * 1e9 if elements else None
    if rate is None:
        per_sec = ""
    elif rate >= 1e6:
        per_sec = f"{rate / 1e6:10.2f} M/s"
    else:
        per_sec = f"{rate:10.0f} /s"
    rows.append((name, median_ns, per_sec))
if not rows:
    sys.exit(f"no criterion results under {root}; run `cargo bench` first")
for name, ns, per_sec in rows:
    shown = f"{ns / 1e6:12.1f} ms" if ns >= 1e6 else f"{ns:12.1f} ns"
    print(f"{name:42} {shown} {per_sec}")
