"""`python -m tokencache.bench` over a tiny run: its rows and the targets it reports (what
the designs do, not how fast this machine is)."""

from __future__ import annotations

import io

from tokencache import bench


def test_bench_runs_every_design_and_reports_the_seed_targets():
    out = io.StringIO()
    rows = bench.run(tokens=100, seconds=0.05, threads=[1, 2], seed=1, out=out)
    assert {(r["design"], r["threads"]) for r in rows} == {
        (d, n) for d in ("seed-original", "seed-debounced", "tokencache", "tokencache-released") for n in (1, 2)}
    by = {(r["design"], r["threads"]): r for r in rows}
    for n in (1, 2):
        # The original writes the file on (nearly) every validation; tokencache and the fix
        # write at most the final flush or the shutdown save.
        assert by["seed-original", n]["writes_per_100"] > 50
        assert by["tokencache", n]["writes"] <= 1 and by["seed-debounced", n]["writes"] <= 1
        assert by["tokencache", n]["count"] > 0
    # last_used within 60 s with no request after it: tokencache's timer writes it, the
    # debounced save (which runs only inside a validation) does not.
    assert by["tokencache", 1]["last_used_60s"] and by["seed-original", 1]["last_used_60s"]
    assert not by["seed-debounced", 1]["last_used_60s"]
    text = out.getvalue()
    assert "targets (the seed's)" in text and "tokencache is" in text and "NOT met" in text


def test_bench_refuses_bad_arguments(capsys):
    import pytest

    with pytest.raises(SystemExit):
        bench.main(["--threads", "x"])
    assert "--threads" in capsys.readouterr().err
