"""bench_tuples: medians over seeds and the ratios to random triplets, and one small run end to end (slow)."""

import json

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_tuples")


def cell(kind, seed, answers, tokens, activations, noise="flip:0.1", target="t"):
    return {"target": target, "noise": noise, "kind": kind, "batch": 8, "seed": seed,
            "goals": {"0.9": {"answers": answers, "tokens": tokens, "activations": activations}}}


def test_medians_over_seeds_and_ratios_to_triplets_of_the_same_target_and_noise(bench):
    cells = [cell("triplet", 0, 30, 300, 90), cell("triplet", 1, 40, 400, 120), cell("triplet", 2, 50, 500, 150),
             cell("rank:4", 0, 10, 100, 50), cell("rank:4", 1, None, None, None), cell("rank:4", 2, 12, 120, 60),
             cell("closest:4", 0, None, None, None), cell("closest:4", 1, None, None, None),
             cell("closest:4", 2, 9, 90, 45),
             cell("rank:4", 0, 5, 50, 25, noise="logistic:0.2")]
    got = {(r["kind"], r["noise"]): r for r in bench.summarise(cells, [0.9])}
    rank = got[("rank:4", "flip:0.1")]["goals"]["0.9"]
    # a seed that missed the goal sorts last: the median of (10, 12, ∞) is 12
    assert (rank["answers"], rank["tokens"], rank["activations"], rank["reached"]) == (12, 120, 60, 2)
    assert (rank["tokens_ratio"], rank["activations_ratio"], rank["answers_ratio"]) == (round(400 / 120, 3), 2.0,
                                                                                         round(40 / 12, 3))
    closest = got[("closest:4", "flip:0.1")]["goals"]["0.9"]
    assert closest["answers"] is None and closest["tokens_ratio"] is None and closest["reached"] == 1
    assert got[("rank:4", "logistic:0.2")]["goals"]["0.9"]["tokens_ratio"] is None  # no triplets under that noise
    assert got[("triplet", "flip:0.1")]["goals"]["0.9"]["tokens_ratio"] == 1.0


def test_a_seed_run_again_with_a_higher_cap_replaces_the_capped_run(bench):
    capped = {**cell("triplet", 1, None, None, None), "max_answers": 20_000}
    again = {**cell("triplet", 1, 31_000, 900, 93_000), "max_answers": 40_000}
    other = {**cell("triplet", 2, 25_000, 800, 75_000), "max_answers": 20_000}
    assert bench.dedupe([again, capped, other]) == [again, other]
    assert bench.dedupe([capped, again]) == [again]


def test_noises_are_read_as_the_oracles_config(bench):
    assert bench.parse_noise("logistic:0.2").temperature == 0.2
    assert bench.parse_noise("flip:0.1").flip == 0.1 and bench.parse_noise("flip:0.1").noise == "flip"
    assert bench.parse_noise("none").noise == "none"
    with pytest.raises(SystemExit, match="gauss"):
        bench.parse_noise("gauss:1")



def test_active_cells_are_compared_with_the_random_triplets(bench):
    cells = [cell("triplet", 0, 30, 300, 90), {**cell("triplet", 0, 15, 150, 45), "active": "ensemble"},
             {**cell("rank:4", 0, 10, 100, 50), "active": "ensemble"}]
    got = {(r["kind"], r.get("active")): r["goals"]["0.9"] for r in bench.summarise(cells, [0.9])}
    assert got[("triplet", "ensemble")]["answers_ratio"] == 2.0  # the random triplets are the base
    assert got[("rank:4", "ensemble")]["tokens_ratio"] == 3.0 and got[("triplet", None)]["tokens_ratio"] == 1.0
    assert bench.active_config(None, bench.parse_noise("none"), 0) is None
    cfg = bench.active_config("ensemble", bench.parse_noise("logistic:0.2"), 3)
    assert (cfg.strategy, cfg.noise.kind, cfg.noise.temperature, cfg.seed) == ("ensemble", "logistic", 0.2, 3)
    assert bench.active_config("ensemble", bench.parse_noise("flip:0.1"), 0).noise.flip == 0.1
    ns = bench.argparse.Namespace
    assert bench.selections(ns(active=None, active_only=False)) == (None,)
    assert bench.selections(ns(active="ensemble", active_only=False)) == (None, "ensemble")
    assert bench.selections(ns(active="ensemble", active_only=True)) == ("ensemble",)


@pytest.mark.slow
def test_a_small_bench_reaches_both_goals_over_http(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "bench-tuples-test")  # the bench sets one for its own process only
    out = bench.main(["--targets", "synthetic:p=6,rank=2", "--kinds", "triplet", "rank:3", "--seeds", "0",
                      "--noises", "none", "--goals", "0.7", "0.8", "--max-answers", "400", "--tuple-batches", "4",
                      "--tokenizer", "estimate", "--out", str(tmp_path / "t.json")])
    cells = {c["kind"]: c for c in out["cells"]}
    assert cells["triplet"]["batch"] == 8 and cells["rank:3"]["batch"] == 4
    for c in cells.values():
        early, late = c["goals"]["0.7"], c["goals"]["0.8"]
        assert c["invalid"] == 0 and 0 < early["answers"] <= late["answers"] and 0 < early["tokens"] <= late["tokens"]
    assert cells["rank:3"]["goals"]["0.8"]["activations"] == cells["rank:3"]["goals"]["0.8"]["answers"] * 4
    assert json.loads((tmp_path / "t.json").read_text())["tokenizer"] == "estimate"
    assert (tmp_path / "t.png").stat().st_size > 10_000


def test_a_side_stopped_at_its_cap_bounds_the_ratio(bench):
    """Triplets that missed the goal on every seed still bound the ratio from below by what they had spent
    by their caps; a kind that missed bounds it from above. Tokens only where the runs recorded them."""
    def done(kind, seed, answers, tokens, activations, noise="flip:0.1"):
        return cell(kind, seed, answers, tokens, activations, noise, target="synthetic:p=32,rank=8")  # table() reads p

    def capped(kind, seed, asked, tokens_total=None, noise="flip:0.1"):
        c = done(kind, seed, None, None, None, noise=noise)
        return {**c, "asked": asked, **({"tokens_total": tokens_total} if tokens_total else {})}

    cells = [capped("triplet", 0, 40_000, 12_000_000), capped("triplet", 1, 30_000, 9_000_000),
             done("rank:8", 0, 2_000, 1_500_000, 18_000), done("rank:8", 1, 3_000, 2_500_000, 27_000),
             capped("triplet", 0, 8_000, noise="none"), done("rank:8", 0, 100, 30_000, 900, noise="none"),
             done("triplet", 0, 1_000, 200_000, 3_000, noise="logistic:0.2"),
             capped("closest:4", 0, 500, noise="logistic:0.2")]
    got = {(r["kind"], r["noise"]): r["goals"]["0.9"] for r in bench.summarise(cells, [0.9])}
    trip = got[("triplet", "flip:0.1")]
    assert trip["answers"] is None and trip["answers_floor"] == 35_000 and trip["tokens_floor"] == 10_500_000
    rank = got[("rank:8", "flip:0.1")]
    assert rank["tokens_ratio"] is None and rank["tokens_ratio_at_least"] == round(10_500_000 / 2_000_000, 3)
    assert rank["activations_ratio_at_least"] == round(35_000 * 3 / 22_500, 3)
    assert "tokens_ratio_at_least" not in got[("rank:8", "none")]  # that triplet run kept no token total
    assert got[("rank:8", "none")]["answers_ratio_at_least"] == 80.0
    assert got[("closest:4", "logistic:0.2")]["activations_ratio_at_most"] == round(3_000 / 2_500, 3)
    table = bench.table(bench.summarise(cells, [0.9]), "0.9")
    assert "> 35,000, > 10,500,000 (0/2)" in table and "**≥ 5.25 / ≥ 4.67** (2/2)" in table
    assert "— / ≤ 1.20 (0/1)" in table and "> 8,000, — (0/1)" in table


def test_cells_fitted_with_a_learnt_sharpness_are_compared_with_triplets_fitted_alike(bench):
    learnt = lambda c: {**c, "learn_sharpness": True}  # noqa: E731
    cells = [cell("triplet", 0, 100, 1000, 300), cell("rank:8", 0, 10, 500, 90),
             learnt(cell("triplet", 0, 50, 500, 150)), learnt(cell("rank:8", 0, 10, 500, 90))]
    got = {(r["kind"], r.get("learn_sharpness", False)): r["goals"]["0.9"] for r in bench.summarise(cells, [0.9])}
    assert got[("rank:8", False)]["tokens_ratio"] == 2.0 and got[("rank:8", True)]["tokens_ratio"] == 1.0
    assert len(bench.dedupe(cells)) == 4  # a learnt-κ run does not replace the fixed-κ one
