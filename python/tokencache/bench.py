"""``python -m tokencache.bench``: the seed's numbers, from Python, in one run.

The problem this project grew from was a Flask service whose ``TokenManager.validate_token``
rewrote its JSON token file under a lock on every request, and whose proposed fix was a
debounced save (at most once per 60 s) in Python. This runs, over the same tokens and the
same request mix, from one and from several threads:

- ``seed-original``: a dict, a ``threading.Lock``, the JSON file rewritten (temp file +
  ``os.replace``, no fsync: kinder to it than a durable write) on every validation;
- ``seed-debounced``: the seed's proposed fix, the same but saving only when 60 s have
  passed since the last save (and once at shutdown);
- ``tokencache``: ``TokenStore.validate`` (flush interval 60 s), holding the GIL;
- ``tokencache-released``: the same with the GIL released around the Rust call, to show
  what releasing it costs (docs/PYTHON.md, "The GIL").

It prints validations per second, p50 and p99 latency, file writes per 100 validations,
and the seed's three targets (validation under 0.2 ms, 100 requests -> at most 1 write,
``last_used`` on disk within 60 s), met or not, and tokencache's ratio to the seed's fix.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import secrets
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Callable, Dict, List, Optional

import tokencache
from tokencache import ManualClock, Rejected, StoreView, TokenStore

SAVE_INTERVAL = 60.0  # the seed's debounce interval and tokencache's flush interval, seconds


class Refused(Exception):
    """The seed designs' refusal of a token."""


class SeedTokenManager:
    """The seed's design: tokens by SHA-256 in a dict, one lock, a JSON file.

    ``debounce`` None: ``save_tokens()`` on every validation (the original);
    otherwise at most once per ``debounce`` seconds, inside ``validate_token`` (the fix).
    """

    def __init__(self, path: str, debounce: Optional[float], now: Callable[[], float] = time.time) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.tokens: Dict[str, dict] = {}
        self.debounce = debounce
        self.now = now
        self._dirty = False
        self._last_save = now()
        self.writes = 0

    def issue(self, name: str) -> str:
        secret = "sk_" + secrets.token_urlsafe(24)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        self.tokens[digest] = {
            "name": name,
            "scopes": ["read", "write"],
            "created_at": datetime.now(timezone.utc).isoformat(),
            "last_used": None,
            "revoked": False,
        }
        return secret

    def save_tokens(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.tokens, f)
        os.replace(tmp, self.path)
        self.writes += 1

    def validate_token(self, token: str) -> dict:
        info = self.tokens.get(hashlib.sha256(token.encode()).hexdigest())
        if info is None or info["revoked"]:
            raise Refused(token[:6])
        with self.lock:
            info["last_used"] = datetime.fromtimestamp(self.now(), timezone.utc).isoformat()
            if self.debounce is None:
                self.save_tokens()
            else:
                self._dirty = True
                now = self.now()
                if now - self._last_save >= self.debounce:
                    self.save_tokens()
                    self._dirty = False
                    self._last_save = now
        return info

    def shutdown(self) -> None:
        with self.lock:
            if self.debounce is None or self._dirty:
                self.save_tokens()
                self._dirty = False


def mix(valid: List[str], revoked: List[str], unknown: List[str], n: int, rng: random.Random) -> List[str]:
    """``n`` requests: 95% valid, 2% revoked, 1.5% unknown, 1.5% malformed."""
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.95:
            out.append(rng.choice(valid))
        elif r < 0.97:
            out.append(rng.choice(revoked))
        elif r < 0.985:
            out.append(rng.choice(unknown))
        else:
            out.append("not-a-token-" + str(rng.randrange(1000)))
    return out


def hammer(validate: Callable[[str], object], requests: List[str], threads: int, seconds: float) -> dict:
    """Runs ``validate`` over ``requests`` from ``threads`` threads for ``seconds``; every
    call timed. Returns ops/s, p50 and p99 (ms), and the count."""
    stop = threading.Event()
    results: List[List[int]] = [[] for _ in range(threads)]
    counts = [0] * threads
    start_gate = threading.Barrier(threads + 1)

    def worker(k: int) -> None:
        lat = results[k]
        perf = time.perf_counter_ns
        reqs = requests
        n = len(reqs)
        i = k * 7919
        start_gate.wait()
        while not stop.is_set():
            for _ in range(64):
                token = reqs[i % n]
                i += 1
                t0 = perf()
                try:
                    validate(token)
                except (Rejected, Refused):
                    pass
                lat.append(perf() - t0)
        counts[k] = len(lat)

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    lat = sorted(x for r in results for x in r)
    total = len(lat)
    return {
        "ops": total / elapsed,
        "p50_ms": lat[total // 2] / 1e6 if total else float("nan"),
        "p99_ms": lat[min(total - 1, (total * 99) // 100)] / 1e6 if total else float("nan"),
        "count": total,
    }


def last_used_seed(debounce: Optional[float], tmp: str) -> bool:
    """Whether a seed design has a validation's ``last_used`` on disk 60 s later when no
    request follows it (a fake clock: nothing waits)."""
    clock = [1_000_000.0]
    m = SeedTokenManager(os.path.join(tmp, f"lu-{debounce}.json"), debounce, now=lambda: clock[0])
    secret = m.issue("probe")
    m.save_tokens()
    clock[0] += 1
    m.validate_token(secret)
    clock[0] += SAVE_INTERVAL  # 60 s pass, no request
    with open(m.path) as f:
        on_disk = json.load(f)
    return any(v["last_used"] is not None for v in on_disk.values())


def last_used_tokencache(tmp: str) -> bool:
    """Whether tokencache has a validation's ``last_used`` on disk 60 s later, read with
    ``StoreView`` beside the open store (its store clock moved by hand: nothing waits)."""
    clock = ManualClock()
    path = os.path.join(tmp, "lu.snap")
    with TokenStore(path, clock=clock, flush_interval=SAVE_INTERVAL) as store:
        issued = store.issue("probe")
        clock.advance(1)
        store.validate(issued.secret)
        clock.advance(SAVE_INTERVAL)  # the persister's timer fires; no request, no flush()
        on_disk = StoreView.read(path).get(issued.id)
        return on_disk is not None and on_disk.last_used is not None


def run(tokens: int, seconds: float, threads: List[int], seed: int, out=sys.stdout) -> List[dict]:
    rng = random.Random(seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tokencache-bench-") as tmp:
        designs = {}
        # The seed's two designs, each with its own file and the same tokens count.
        for name, debounce in (("seed-original", None), ("seed-debounced", SAVE_INTERVAL)):
            m = SeedTokenManager(os.path.join(tmp, f"{name}.json"), debounce)
            secrets_ = [m.issue(f"client-{i}") for i in range(tokens)]
            revoked = secrets_[: max(1, tokens // 50)]
            for s in revoked:
                m.tokens[hashlib.sha256(s.encode()).hexdigest()]["revoked"] = True
            m.save_tokens()
            m.writes = 0
            unknown = ["sk_" + secrets.token_urlsafe(24) for _ in range(16)]
            designs[name] = (m, mix(secrets_[len(revoked):], revoked, unknown, 65536, random.Random(seed)))
        store = TokenStore(os.path.join(tmp, "tokens.snap"), flush_interval=SAVE_INTERVAL)
        issued = store.issue_many([{"name": f"client-{i}", "scopes": ["read", "write"]} for i in range(tokens)])
        revoked = issued[: max(1, tokens // 50)]
        for t in revoked:
            store.revoke(t.id)
        with TokenStore(os.path.join(tmp, "other.snap")) as other:
            unknown = [other.issue("x").secret for _ in range(16)]
        requests = mix([t.secret for t in issued[len(revoked):]], [t.secret for t in revoked], unknown, 65536, random.Random(seed))

        def store_writes() -> int:
            s = store.stats()
            return s["journal_records_written"] + s["snapshots_written"]

        for n in threads:
            for name in ("seed-original", "seed-debounced", "tokencache", "tokencache-released"):
                if name.startswith("seed"):
                    m, reqs = designs[name]
                    before = m.writes
                    # The original writes on every call: give it a fifth of the time.
                    r = hammer(m.validate_token, reqs, n, seconds / 5 if name == "seed-original" else seconds)
                    m.shutdown()  # the debounced design's shutdown save counts
                    writes = m.writes - before
                else:
                    before = store_writes()
                    fn = store.validate if name == "tokencache" else store._validate_released
                    r = hammer(fn, requests, n, seconds)
                    store.flush()  # the last interval's write counts, as the shutdown save does
                    writes = store_writes() - before
                r.update(design=name, threads=n, writes=writes, writes_per_100=100.0 * writes / max(1, r["count"]))
                rows.append(r)
        store.close()
        lu = {
            "seed-original": last_used_seed(None, tmp),
            "seed-debounced": last_used_seed(SAVE_INTERVAL, tmp),
            "tokencache": last_used_tokencache(tmp),
        }
        lu["tokencache-released"] = lu["tokencache"]
    for r in rows:
        r["last_used_60s"] = lu[r["design"]]
    report(rows, tokens, seconds, out)
    return rows


def report(rows: List[dict], tokens: int, seconds: float, out) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"tokencache {tokencache.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
      f"{tokens} tokens, mix 95% valid / 2% revoked / 1.5% unknown / 1.5% malformed; "
      f"{seconds:g} s per design and thread count (seed-original: a fifth of it); every call timed")
    p("")
    p(f"{'design':<21}{'threads':>7}{'calls/s':>11}{'p50':>10}{'p99':>10}{'writes':>8}{'/100 val.':>10}"
      f"  {'<0.2 ms':<8}{'1 write':<8}{'60 s':<5}")
    yes = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    for r in rows:
        p(f"{r['design']:<21}{r['threads']:>7}{r['ops']:>11,.0f}{r['p50_ms'] * 1000:>8.1f}us{r['p99_ms'] * 1000:>8.1f}us"
          f"{r['writes']:>8}{r['writes_per_100']:>10.3f}  {yes(r['p99_ms'] < 0.2):<8}{yes(r['writes_per_100'] <= 1.0):<8}"
          f"{yes(r['last_used_60s']):<5}")
    p("")
    p("targets (the seed's): validation under 0.2 ms (judged on p99); 100 requests -> at most 1 file write;")
    p("last_used on disk within 60 s of the validation with no request after it (a clock moved by hand).")
    for n in sorted({r["threads"] for r in rows}):
        by = {r["design"]: r for r in rows if r["threads"] == n}
        if "tokencache" in by and "seed-debounced" in by:
            tc, fix = by["tokencache"], by["seed-debounced"]
            p(f"{n} thread(s): tokencache is {tc['ops'] / fix['ops']:.1f}x the seed's fix in validations/s, "
              f"{tc['ops'] / by['seed-original']['ops']:.0f}x the original; GIL released: "
              f"{by['tokencache-released']['ops'] / tc['ops']:.2f}x held")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tokencache.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=1000, help="tokens per design (default 1000)")
    ap.add_argument("--seconds", type=float, default=2.0, help="per design and thread count (default 2)")
    ap.add_argument("--threads", default="1,4", help="thread counts, comma-separated (default 1,4)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", action="store_true", help="also print the rows as JSON")
    a = ap.parse_args(argv)
    if a.tokens < 100 or a.seconds <= 0:
        ap.error("--tokens must be at least 100 and --seconds positive")
    try:
        threads = [int(t) for t in a.threads.split(",")]
    except ValueError:
        ap.error(f"--threads takes counts like 1,4, not {a.threads!r}")
    if not threads or min(threads) < 1:
        ap.error("--threads takes counts of at least 1")
    rows = run(a.tokens, a.seconds, threads, a.seed)
    if a.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
