#!/usr/bin/env bash
# Speed of two builds of tokencache side by side, taking turns (docs/BENCHMARKS.md,
# "Two builds side by side"):
#
#   scripts/compare_builds.sh OLD_TREE NEW_TREE [ROUNDS]
#
# Each tree is a checkout (e.g. `git worktree add ../old <commit>`) built with
# `cargo build --release --features cli && cargo bench --bench store --no-run`. Runs
# ROUNDS (default 5) rounds of `stress --compare --threads 1,2 --seconds 2 --json` and of
# criterion's `validate/(hit|miss)/` group, the order of the two builds alternating between
# rounds (ABBA: on this machine the second run of a pair is often slower), then prints each
# build's medians and the median of the per-round ratios, per order and overall.
set -euo pipefail
old=$(cd "$1" && pwd); new=$(cd "$2" && pwd); rounds=${3:-5}
out=$(mktemp -d /tmp/compare_builds.XXXX)
bench_exe() { ls -t "$1"/target/release/deps/store-* | grep -v '\.d$' | head -1; }
for i in $(seq 1 "$rounds"); do
    if [ $((i % 2)) = 1 ]; then order="old new"; else order="new old"; fi
    for v in $order; do
        tree=$old; [ "$v" = new ] && tree=$new
        scratch=$(mktemp -d "$out/s.XXXX")
        (cd "$scratch" && "$tree/target/release/tokencache" stress --compare --threads 1,2 \
            --seconds 2 --json > "$out/stress-$v$i.json" 2>/dev/null)
        rm -rf "$scratch"
        (cd "$tree" && "$(bench_exe "$tree")" --bench 'validate/(hit|miss)/' --warm-up-time 1 \
            --measurement-time 2 > "$out/crit-$v$i.txt" 2>&1)
    done
    echo "round $i of $rounds done" >&2
done
python3 - "$out" "$rounds" <<'PY'
import json, re, statistics as st, sys
out, rounds = sys.argv[1], int(sys.argv[2])
odd = [i for i in range(1, rounds + 1) if i % 2]   # old ran first
even = [i for i in range(1, rounds + 1) if not i % 2]
def line(name, unit, get):
    old = {i: get('old', i) for i in range(1, rounds + 1)}
    new = {i: get('new', i) for i in range(1, rounds + 1)}
    ratio = lambda rs: f"{st.median([new[i] / old[i] for i in rs]):.2f}" if rs else "-"
    print(f"{name:28} old {st.median(old.values()):9.2f} {unit}  new {st.median(new.values()):9.2f} {unit}"
          f"  new/old {ratio(odd + even)} (old first {ratio(odd)}, new first {ratio(even)})")
for design in ('tokencache', 'dashmap'):
    for threads in (1, 2):
        def ops(v, i):
            rows = json.load(open(f"{out}/stress-{v}{i}.json"))
            return [r['ops_per_sec'] for r in rows if r['design'] == design and r['threads'] == threads][0] / 1e6
        line(f"stress {design} {threads}t", "M/s", ops)
for bench in ('validate/hit/100k', 'validate/miss/100k', 'validate/hit/1M', 'validate/miss/1M'):
    def ns(v, i):
        text = open(f"{out}/crit-{v}{i}.txt").read()
        m = re.search(re.escape(bench) + r'\s+time:\s+\[\S+ \S+ (\S+) (\S+)', text)
        return float(m.group(1)) * (1000 if m.group(2) == 'µs' else 1)
    line(bench, "ns ", ns)
PY
echo "raw results: $out" >&2
