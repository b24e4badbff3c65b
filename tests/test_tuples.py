"""Closest-of-k, rank-k and odd-one-out questions: records, designs, store, oracle, learner, a CLI run."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fbloop import metrics
from fbloop.agents import OracleAgent, OracleConfig
from fbloop.agents.choice import option_distances
from fbloop.errors import ConfigError, ShapeError
from fbloop.learners import GradientLearner, LearnerConfig
from fbloop.queries.catalogue import make_design
from fbloop.queries.designs import DesignConfig
from fbloop.records import MAX_K, Queries, ranking_code, ranking_from_code, shown_per_question
from fbloop.sparse import SparseBatch
from fbloop.store import Store
from fbloop.store import migrations as migrations_module
from fbloop.store.codec import _encode
from fbloop.targets.load import load_target


@pytest.fixture(scope="module")
def target():
    return load_target("synthetic:p=8,rank=3")


def design(name: str, target, k: int | None = None, dist: str = "sparse", seed: int = 0):
    return make_design(DesignConfig(name=name, k=k, dist=dist), target, seed)


# ---------------------------------------------------------------- records


def test_every_ranking_of_four_has_its_own_code_in_lexicographic_order():
    perms = np.array(list(itertools.permutations(range(4))))
    codes = ranking_code(perms)
    assert codes.tolist() == list(range(24))
    assert (ranking_from_code(codes, 4) == perms).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(2, MAX_K).flatmap(lambda k: st.permutations(list(range(k)))))
def test_ranking_code_round_trips_up_to_the_largest_k(perm):
    code = ranking_code(np.array([perm]))
    assert 0 <= code[0] < math.factorial(len(perm)) and float(int(code[0])) == code[0]
    assert ranking_from_code(code, len(perm))[0].tolist() == list(perm)


@pytest.mark.parametrize("bad", [[[0, 0, 1]], [[0, 1, 3]]])
def test_a_ranking_that_is_no_permutation_is_refused_naming_it(bad):
    with pytest.raises(ShapeError, match=r"permutations of 0…2, got \[0, "):
        ranking_code(np.array(bad))


def test_a_code_out_of_range_is_refused():
    with pytest.raises(ShapeError, match="0…5"):
        ranking_from_code(np.array([6.0]), 3)


def test_queries_check_their_candidates():
    a = SparseBatch(np.zeros((2, 1), np.int64), np.ones((2, 1)), 4)
    with pytest.raises(ShapeError, match="2 to 16 candidates"):
        Queries("closest", np.arange(2), a, cands=(a,))
    with pytest.raises(ShapeError, match="Unknown query kind 'quad'"):
        Queries("quad", np.arange(2), a)  # type: ignore[arg-type]
    q = Queries("rank", np.arange(2), a, cands=(a, a, a))
    assert q.k == 3 and q.select(np.array([False, True])).cands[2].indices.shape == (1, 1)


def test_queries_concatenate_and_pick_rows_in_any_order():
    a = SparseBatch(np.arange(3).reshape(3, 1), np.ones((3, 1)), 4)
    one = Queries("closest", np.arange(3), a, cands=(a, a))
    two = Queries("closest", np.array([7]), a[:1], cands=(a[2:], a[1:2]))
    both = Queries.concat([one, two]).select(np.array([3, 0]))
    assert both.seq.tolist() == [7, 0] and [c.indices[:, 0].tolist() for c in both.cands] == [[2, 0], [1, 0]]
    with pytest.raises(ShapeError, match=r"one kind and k.*k \[2, 3\]"):
        Queries.concat([one, Queries("closest", np.array([8]), a[:1], cands=(a[:1],) * 3)])
    assert [shown_per_question(kind, 4) for kind in ("pair", "triplet", "odd", "closest", "rank")] == [2, 3, 3, 5, 5]


# ---------------------------------------------------------------- designs


@pytest.mark.parametrize("name,k,m", [("closest", 5, 5), ("rank", None, 4), ("odd", None, 3)])
@pytest.mark.parametrize("dist", ["sparse", "gaussian"])
def test_designs_are_deterministic_and_chunk_independent(target, name, k, m, dist):
    d = design(name, target, k, dist)
    whole = d.queries(0, 50)
    part = d.queries(20, 30)
    assert whole.kind == name and whole.k == m
    batches = (lambda q: [q.a, q.b, q.c] if name == "odd" else [q.a, *q.cands])
    for x, y in zip(batches(whole), batches(part)):
        assert np.array_equal(x.values[20:30], y.values) and np.array_equal(x.indices[20:30], y.indices)
    assert not np.array_equal(whole.a.values, design(name, target, k, dist, seed=1).queries(0, 50).a.values)


@pytest.mark.parametrize("kw,match", [({"name": "triplet", "k": 4}, "only for the closest and rank"),
                                      ({"name": "closest", "k": 1}, r"k in \[2, 16\]"),
                                      ({"name": "rank", "k": 17}, "k=17")])
def test_a_bad_k_is_refused_naming_it(kw, match):
    with pytest.raises(ConfigError, match=match):
        DesignConfig(**kw)


# ---------------------------------------------------------------- store


@pytest.mark.parametrize("name,k", [("closest", 3), ("rank", 6), ("odd", None)])
def test_tuple_queries_and_answers_round_trip_through_the_store(tmp_path, target, name, k):
    q = design(name, target, k, "gaussian").queries(0, 40)
    ans = OracleAgent(target.factor, design(name, target, k).anchor()).answer(q)
    with Store(tmp_path / "t.db") as db:
        db.create_run("R", kind=name, p=target.p, budget=40, config={}, target={}, anchor=None)
        assert db.record("R", q, ans) == 40
        back = db.load_queries("R")
        (got_q, got_a), = list(db.iter_answered("R"))
    for x, y in zip([back.a, *(back.cands or (back.b, back.c))], [q.a, *(q.cands or (q.b, q.c))]):
        assert np.array_equal(x.to_dense(), y.to_dense())
    assert got_q.kind == name and got_q.k == q.k and np.array_equal(got_a.value, ans.value)


def test_a_database_from_before_migration_9_opens_and_keeps_its_triplets(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    old = [m for m in migrations_module.MIGRATIONS if m[0] < 9]
    monkeypatch.setattr(migrations_module, "MIGRATIONS", old)
    b = SparseBatch(np.array([[0], [1]]), np.array([[1.0], [2.0]]), 4)
    with Store(path) as db:  # what the code before migration 9 wrote: no candidate columns
        db.create_run("T", kind="triplet", p=4, budget=2, config={}, target={}, anchor=None)
        rows = _encode(b)
        for seq, (i, v) in enumerate(rows):
            db.db.execute("INSERT INTO queries (run_id, seq, kind, a_idx, a_val, b_idx, b_val, c_idx, c_val) "
                          "VALUES ('T', ?, 'triplet', ?, ?, ?, ?, ?, ?)", [seq, i, v, i, v, i, v])
    monkeypatch.undo()
    with Store(path) as db:
        assert 9 in [r[0] for r in db.db.execute("SELECT id FROM _migrations")]
        q = db.load_queries("T")
        assert q.kind == "triplet" and q.cands is None and np.array_equal(q.c.values, b.values)


def test_export_spells_out_candidates_and_rankings(tmp_path, target):
    q = design("rank", target, 3).queries(0, 5)
    ans = OracleAgent(target.factor, design("rank", target, 3).anchor()).answer(q)
    with Store(tmp_path / "t.db") as db:
        db.create_run("R", kind="rank", p=target.p, budget=5, config={}, target={}, anchor=None)
        db.record("R", q, ans)
        db.export("R", tmp_path / "r.jsonl")
        db.export("R", tmp_path / "r.parquet")
    recs = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    d = option_distances(q, target.factor)
    for i, r in enumerate(recs):
        assert r["kind"] == "rank" and len(r["cands_indices"]) == 3
        assert r["ranking"] == (np.argsort(d[i], kind="stable") + 1).tolist()
        assert r["cands_values"][0] == [v for v in q.cands[0].values[i] if v != 0]
    import pandas as pd

    assert pd.read_parquet(tmp_path / "r.parquet")["ranking"].map(list).tolist() == [r["ranking"] for r in recs]


# ---------------------------------------------------------------- oracle


def test_the_exact_oracle_answers_by_the_distances(target):
    for name, k in [("closest", 6), ("rank", 5), ("odd", None)]:
        q = design(name, target, k, "gaussian").queries(0, 300)
        v = OracleAgent(target.factor, design(name, target, k).anchor()).answer(q).value
        d = option_distances(q, target.factor)
        if name == "rank":
            assert (ranking_from_code(v, 5) == np.argsort(d, axis=1, kind="stable")).all()
        else:
            assert (v == np.argmin(d, axis=1) + 1).all()
    # odd one out: item i is odd when the other two are the closest pair
    q = design("odd", target, dist="gaussian").queries(0, 1)
    dist = lambda x, y: float(np.sum(((x.to_dense() - y.to_dense()) @ target.factor) ** 2))  # noqa: E731
    pairs = {1: dist(q.b, q.c), 2: dist(q.a, q.c), 3: dist(q.a, q.b)}
    assert OracleAgent(target.factor, q.a).answer(q).value[0] == min(pairs, key=pairs.get)


def test_no_clear_winner_inside_the_tie_band(target):
    q = design("closest", target, 4).queries(0, 2000)  # sparse: identical candidates tie exactly
    v = OracleAgent(target.factor, q.a, OracleConfig(tie_band=0.05)).answer(q).value
    d = np.sort(option_distances(q, target.factor), axis=1)
    tie = d[:, 1] - d[:, 0] <= 0.05 * (d[:, 0] + d[:, 1]) / 2
    assert tie.any() and (v[tie] == 0).all() and (v[~tie] > 0).all()


def test_logistic_closest_follows_the_softmax_choice_model(target):
    # one question asked at many positions: the choice frequencies are the model's softmax
    q1 = design("closest", target, 3, "gaussian").queries(7, 8)
    n = 20000
    rep = lambda b: SparseBatch(np.repeat(b.indices, n, 0), np.repeat(b.values, n, 0), b.p)  # noqa: E731
    q = Queries("closest", np.arange(n), rep(q1.a), cands=tuple(rep(c) for c in q1.cands))
    T = 0.3
    v = OracleAgent(target.factor, q.a, OracleConfig(noise="logistic", temperature=T)).answer(q).value
    d = option_distances(q1, target.factor)[0]
    u = -d / (T * 2 * d.mean())
    want = np.exp(u - u.max()) / np.exp(u - u.max()).sum()
    got = np.bincount(v.astype(int), minlength=4)[1:] / n
    assert np.abs(got - want).max() < 0.015, (got, want)


def test_flips_replace_the_answer_at_the_given_rate(target):
    for name, k in [("closest", 4), ("rank", 4), ("odd", None)]:
        q = design(name, target, k, "gaussian").queries(0, 8000)
        exact = OracleAgent(target.factor, q.a).answer(q).value
        flipped = OracleAgent(target.factor, q.a, OracleConfig(noise="flip", flip=0.2)).answer(q).value
        changed = (exact != flipped).mean()
        want = 0.2 * (1 - 1 / 24) if name == "rank" else 0.2  # a random ranking may be the true one
        assert abs(changed - want) < 0.02, (name, changed)


def test_noisy_answers_are_a_function_of_the_position(target):
    q = design("rank", target, 4).queries(0, 64)
    o = OracleAgent(target.factor, q.a, OracleConfig(noise="logistic", temperature=0.2, seed=5))
    assert np.array_equal(o.answer(q).value[40:], o.answer(q.select(np.arange(64) >= 40)).value)


# ---------------------------------------------------------------- learner


def fit(target, name, k, n, config=OracleConfig(), eps=None):
    q = design(name, target, k, "gaussian").queries(0, n)
    v = OracleAgent(target.factor, q.a, config).answer(q).value
    learner = GradientLearner(target.p, LearnerConfig(rank=3, final_steps=1500, seed=0))
    learner.add_tuples(q, v)
    if eps is not None:
        learner.set_source_noise({0: eps})
    learner.finish()
    return metrics.pcc(learner.phi(), target.factor @ target.factor.T)


@pytest.mark.parametrize("name,k", [("closest", 4), ("rank", 4), ("odd", None)])
def test_the_learner_recovers_phi_from_tuple_answers(target, name, k):
    assert fit(target, name, k, 150) > 0.98


def test_flip_rates_help_the_learner_on_flipped_rankings(target):
    # 150 rankings of 4, 30% replaced by random ones: PCC 0.9973 fitted at the true ε, 0.9634 taken as exact
    noisy = OracleConfig(noise="flip", flip=0.3, seed=1)
    assert fit(target, "rank", 4, 150, noisy, eps=0.3) > 0.99 > fit(target, "rank", 4, 150, noisy)


def test_tuple_answers_out_of_range_are_refused(target):
    q = design("closest", target, 3).queries(0, 2)
    with pytest.raises(ConfigError, match=r"closest answers in 0…3"):
        GradientLearner(target.p).add_tuples(q, np.array([1.0, 4.0]))


# ---------------------------------------------------------------- a run, resumed


@pytest.mark.slow  # 19–29 s on 2 cores
def test_a_rank_run_through_the_cli_resumes_without_asking_again(tmp_path):
    args = [sys.executable, "-m", "fbloop", "run", "--target", "synthetic:p=6,rank=2", "--design", "rank",
            "--k", "3", "--budget", "120", "--db", str(tmp_path / "r.db"), "--run-id", "r", "--json",
            "--noise", "logistic", "--learner", "gradient"]
    first = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    second = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    assert first["answers"] == second["answers"] == 120 and first["pcc"] > 0.9
    assert first["activations_shown"] == second["activations_shown"] == 120 * 4  # a reference, 3 candidates
    with Store(tmp_path / "r.db") as db:
        assert db.count_answers("r") == 120 and db.runs("r")[0]["kind"] == "rank"
