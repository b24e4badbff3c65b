"""bench_sharpness: medians over seeds and ratios to κ = 50, and one small run end to end."""

import json

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_sharpness")


def cell(mode, seed, answers, kind="triplet", noise="logistic:0.2"):
    return {"target": "synthetic:p=32,rank=8", "kind": kind, "noise": noise, "seed": seed, "mode": mode,
            "answers": answers}


def test_medians_and_ratios_to_kappa_50(bench):
    cells = [cell("fixed:50", 0, 700), cell("fixed:50", 1, 800), cell("fixed:50", 2, None),
             cell("learn", 0, 300), cell("learn", 1, 400), cell("learn", 2, 500),
             cell("fixed:10", 0, None), cell("fixed:10", 1, None), cell("fixed:10", 2, 100)]
    got = {r["mode"]: r for r in bench.summarise(cells)}
    assert got["fixed:50"]["answers"] == 800 and got["fixed:50"]["reached"] == 2  # the miss sorts last
    assert got["learn"]["ratio_to_50"] == 2.0 and got["learn"]["per_seed"] == [300, 400, 500]
    assert got["fixed:10"]["answers"] is None and got["fixed:10"]["ratio_to_50"] is None
    table = bench.table(bench.summarise(cells))
    assert "| p=32,rank=8 | triplet | logistic:0.2 | 800 [2/3] | — [1/3] | 400 (2.00×) [3/3] |" in table


def test_a_small_run_writes_its_results(bench, tmp_path):
    out = bench.main(["--targets", "synthetic:p=8,rank=2", "--kinds", "rank:4", "--noises", "logistic:0.2",
                      "--seeds", "0", "--every", "16", "--max-answers", "2000", "--out", str(tmp_path / "s.json")])
    data = json.loads((tmp_path / "s.json").read_text())
    assert (tmp_path / "s.png").stat().st_size > 10_000 and len(data["cells"]) == 3
    learnt = next(c for c in out["cells"] if c["mode"] == "learn")
    assert learnt["answers"] is not None and 2 < learnt["sharpness"]["oracle-logistic"] < 10
