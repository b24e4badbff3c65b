"""The pool benchmark's verdict: a single agent that stopped at its cap before the level is only
bounded from below, so the pool is called cheaper only when it beats that bound."""

import numpy as np
import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_pool")


def run(arm: str, seed: int, cost: float | None, final_cost: float) -> dict:
    return {"arm": arm, "seed": seed, "reached": cost is not None, "cost": cost,
            "answers": None if cost is None else int(cost * 100), "final_cost": final_cost}


def test_unreached_single_agent_is_a_lower_bound(bench):
    rows = [run("people", s, 1280.0, 1280.0) for s in (0, 1)]
    rows += [run("pool", 0, 934.6, 960.0), run("pool", 1, 1041.5, 1050.0)]
    rows += [run("llm", s, None, 600.0) for s in (0, 1)]  # stopped at cost 600, below the pool's
    summary = bench.summarise(rows)
    assert summary["llm"]["median_cost"] == np.inf
    assert summary["llm"]["median_cost_at_least"] == 600.0
    assert summary["pool"]["median_cost"] == pytest.approx(988.05)
    assert bench.pool_cheaper(summary) is None  # the LLM might have got there for less than 988

    rows = [r for r in rows if r["arm"] != "llm"] + [run("llm", s, None, 1050.0) for s in (0, 1)]
    assert bench.pool_cheaper(bench.summarise(rows)) is True  # it spent more than the pool and never got there


def test_a_cheaper_single_agent_beats_the_pool(bench):
    rows = [run("people", 0, 1280.0, 1280.0), run("pool", 0, 934.6, 960.0), run("llm", 0, 113.3, 120.0)]
    assert bench.pool_cheaper(bench.summarise(rows)) is False
    assert bench.pool_cheaper(bench.summarise(rows[:1])) is None  # no pool arm: nothing to compare
