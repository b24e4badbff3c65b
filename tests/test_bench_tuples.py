"""bench_tuples: the ratios to random triplets, and one small run end to end (slow)."""

import json

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_tuples")


def test_ratios_compare_each_kind_with_triplets_of_the_same_target_and_seed(bench):
    cells = [{"target": "t", "seed": 0, "kind": "triplet", "tokens": 300, "activations": 90, "answers": 30},
             {"target": "t", "seed": 0, "kind": "rank:4", "tokens": 100, "activations": 50, "answers": 10},
             {"target": "t", "seed": 1, "kind": "rank:4", "tokens": 100, "activations": 50, "answers": 10},
             {"target": "t", "seed": 0, "kind": "closest:4", "tokens": None, "activations": None, "answers": None}]
    got = bench.ratios(cells)
    assert (got[1]["tokens_ratio"], got[1]["activations_ratio"], got[1]["answers_ratio"]) == (3.0, 1.8, 3.0)
    assert got[2]["tokens_ratio"] is None  # no triplet run for seed 1
    assert got[3]["tokens_ratio"] is None  # the goal not reached



def test_active_cells_are_compared_with_the_random_triplets(bench):
    cells = [{"target": "t", "seed": 0, "kind": "triplet", "tokens": 300, "activations": 90, "answers": 30},
             {"target": "t", "seed": 0, "kind": "triplet", "tokens": 150, "activations": 45, "answers": 15,
              "active": "ensemble"},
             {"target": "t", "seed": 0, "kind": "rank:4", "tokens": 100, "activations": 50, "answers": 10,
              "active": "ensemble"}]
    got = bench.ratios(cells)
    assert got[1]["answers_ratio"] == 2.0 and got[2]["tokens_ratio"] == 3.0  # the random triplets are the base
    assert bench.active_config(None, None, 0) is None
    args = bench.argparse.Namespace(noise="logistic", temperature=0.1, flip=0.1)
    cfg = bench.active_config("ensemble", args, 3)
    assert (cfg.strategy, cfg.noise.kind, cfg.noise.temperature, cfg.seed) == ("ensemble", "logistic", 0.1, 3)


@pytest.mark.slow
def test_a_small_bench_reaches_the_goal_over_http(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "bench-tuples-test")  # the bench sets one for its own process only
    out = bench.main(["--targets", "synthetic:p=6,rank=2", "--kinds", "triplet", "rank:3", "--seeds", "0",
                      "--goal", "0.8", "--max-answers", "400", "--tuple-batches", "4", "--out",
                      str(tmp_path / "t.json")])
    cells = {c["kind"]: c for c in out["cells"]}
    assert cells["triplet"]["batch"] == 8 and cells["rank:3"]["batch"] == 4
    assert all(c["answers"] and c["tokens"] > 0 and c["invalid"] == 0 for c in cells.values())
    assert cells["rank:3"]["activations"] == cells["rank:3"]["answers"] * 4
    assert json.loads((tmp_path / "t.json").read_text())["cells"][0]["kind"] == "triplet"
