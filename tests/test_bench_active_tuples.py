"""bench_active_tuples: the summary's means and ratios, and one tiny cell end to end."""

import math

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_active_tuples")


def test_summary_compares_each_strategy_with_fixed_and_random_questions(bench):
    cell = lambda strategy, seed, answers: {"target": "t", "kind": "rank:4", "strategy": strategy,  # noqa: E731
                                            "seed": seed, "answers": answers}
    cells = [cell("fixed", 0, 400), cell("fixed", 1, 900), cell("random", 0, 300), cell("random", 1, 300),
             cell("ensemble", 1, 100), cell("ensemble", 0, 400), cell("uncertainty", 0, 200),
             cell("uncertainty", 1, None)]
    rows = {r["strategy"]: r for r in bench.summary(cells)}
    assert rows["ensemble"]["answers"] == [400, 100] and rows["ensemble"]["geomean"] == 200.0  # seed order
    assert rows["ensemble"]["fixed_ratio"] == 3.0 and rows["ensemble"]["random_ratio"] == 1.5
    assert rows["random"]["random_ratio"] == 1.0 and rows["fixed"]["random_ratio"] == round(300 / 600, 3)
    assert rows["uncertainty"]["geomean"] is None and rows["uncertainty"]["fixed_ratio"] is None  # a seed missed
    assert math.isclose(rows["fixed"]["geomean"], 600.0)


@pytest.mark.slow
def test_one_cell_stops_at_the_goal(bench, tmp_path):
    out = bench.main(["--targets", "synthetic:p=6,rank=2", "--kinds", "rank:3", "--strategies", "ensemble",
                      "--seeds", "0", "--goal", "0.8", "--max-answers", "200", "--out", str(tmp_path / "a.json")])
    cell = out["cells"][0]
    assert cell["answers"] is not None and cell["answers"] == cell["asked"] and cell["answers"] % 16 == 0
    assert cell["last_live_pcc"] >= 0.8 and cell["scoring_s"] > 0
    assert out["summary"][0]["answers"] == [cell["answers"]]
