"""People answering tuple questions (closest of k, rank k, odd one out): the same queue, leases, undo,
skips, attention checks and never-twice as triplets, with answers in each kind's own terms."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest

from fbloop.agents import people as human
from fbloop.agents.base import Ledger
from fbloop.agents.reliability import CHECK_PRIOR, check_chance, flip_rate_from_checks
from fbloop.errors import ConfigError
from fbloop.queries.catalogue import make_design
from fbloop.queries.designs import DesignConfig
from fbloop.records import codes_with_first, ranking_code, ranking_from_code
from fbloop.store import Store
from fbloop.targets.load import load_target

from conftest import sql_rows
from simulated_people import Annotators, exact_answer

SPEC = "synthetic:p=8,rank=3"
K = {"closest": 4, "rank": 4, "odd": 3}


@pytest.fixture(scope="module")
def target():
    return load_target(SPEC)


def questions(kind: str, target, start: int = 0, stop: int = 20):
    k = K[kind] if kind != "odd" else None
    return make_design(DesignConfig(name=kind, k=k, mu=0.7), target, seed=0).queries(start, stop)


@pytest.fixture(params=["closest", "rank", "odd"])
def run(request, tmp_path, target):
    """``(store, kind)``: a run of ``kind`` questions queued for people, one in five an attention check."""
    kind = request.param
    with Store(tmp_path / "runs.db") as store:
        store.create_run("r", kind=kind, p=target.p, budget=20, config={"target": SPEC}, target={}, anchor=None)
        assert human.queue(store, "r", questions(kind, target), check_rate=0.2) == {"queued": 20, "checks": 5}
        yield store, kind


def same(x, y) -> bool:
    """Whether two one-row batches are one activation."""
    return np.array_equal(x.to_dense(), y.to_dense())


def test_tuple_checks_repeat_the_reference_or_pair_two_items(run):
    store, kind = run
    checks = store.checks("r")
    assert sorted(checks) == list(range(-5, 0)) and store.queued("r")[0] >= 0  # a real question first
    q = store.load_queries("r", np.array(sorted(checks)))
    assert q.kind == kind and q.k == K[kind]
    for row, s in enumerate(q.seq.tolist()):
        kind_, expected = checks[s]
        one = q.select(np.array([row]))
        assert kind_ == "identical"
        if kind == "odd":  # the two items that are not the expected one are one activation; it differs
            i = int(expected) - 1
            pair = [x for j, x in enumerate((one.a, one.b, one.c)) if j != i]
            assert same(*pair) and not same(pair[0], (one.a, one.b, one.c)[i])
        else:
            j = int(expected) - 1 if kind == "closest" else int(expected) // math.factorial(K[kind] - 1)
            assert same(one.cands[j], one.a)
    ranges = {r[0]: (r[1], r[2]) for r in store.db.execute("SELECT seq, expected, expected_hi FROM checks")}
    for lo, hi in ranges.values():  # a rank check accepts every ranking with its candidate first: (k-1)! of them
        assert (hi is None) == (kind != "rank") and (kind != "rank" or hi - lo + 1 == math.factorial(K[kind] - 1))


@pytest.mark.parametrize("kind", ["closest", "rank", "odd"])
def test_with_a_target_half_the_tuple_checks_are_lopsided_questions_shown_reversed(tmp_path, target, kind):
    """A queued question Φ* finds one-sided, its candidates (items) reversed; the exact oracle passes it."""
    from fbloop.agents.oracle import OracleAgent
    from fbloop.store.crowd import passes

    with Store(tmp_path / "l.db") as store:
        store.create_run("l", kind=kind, p=target.p, budget=200, config={"target": SPEC}, target={}, anchor=None)
        human.queue(store, "l", questions(kind, target, stop=200), check_rate=0.2, factor=target.factor, seed=3)
        checks = store.checks("l")
        lop = sorted(s for s, c in checks.items() if c[0] == "lopsided")
        assert 10 < len(lop) < 40 and len(lop) + sum(c[0] == "identical" for c in checks.values()) == 50
        shown = store.load_queries("l", np.array(lop))
        at = dataclasses.replace(shown, seq=np.arange(len(shown)))  # the oracle draws by position, from 0
        answers = OracleAgent(target.factor, shown.a).answer(at).value
        rows = {r[0]: (r[1], r[2]) for r in store.db.execute("SELECT seq, expected, expected_hi FROM checks")}
        assert all(passes(v, *rows[s]) for s, v in zip(shown.seq.tolist(), answers))
        asked = questions(kind, target, stop=200)
        items = lambda q: [q.a, q.b, q.c] if kind == "odd" else [q.a, *q.cands]  # noqa: E731
        want = np.concatenate([x.to_dense() for x in items(asked)], axis=1)  # (200, items · p)
        for i in range(len(shown)):  # each is a queued question with its candidates (items) reversed
            row = [x.to_dense()[i] for x in items(shown)]
            back = row[::-1] if kind == "odd" else [row[0], *row[1:][::-1]]
            assert (np.abs(want - np.concatenate(back)).max(axis=1) == 0).any()
            assert kind == "odd" or not any(np.array_equal(c, row[0]) for c in row[1:])  # not an identical one


@pytest.mark.parametrize("kind, k, answer, value", [
    ("closest", 4, 3, 3.0), ("closest", 4, 0, 0.0), ("closest", 4, "none", 0.0), ("closest", 4, np.int64(4), 4.0),
    ("odd", 3, 1, 1.0), ("odd", 3, 3, 3.0),
    ("rank", 4, [1, 2, 3, 4], 0.0), ("rank", 4, (4, 3, 2, 1), 23.0), ("rank", 3, [2, 3, 1], 3.0),
    ("triplet", 2, "second", -1.0),
])
def test_answers_in_each_kinds_own_terms(kind, k, answer, value):
    assert human.answer_value(kind, k, answer) == ("ok", value)
    status, skipped = human.answer_value(kind, k, "skip")
    assert status == "skipped" and math.isnan(skipped)


@pytest.mark.parametrize("kind, k, answer, says", [
    ("closest", 4, 5, "5"), ("closest", 4, -1, "-1"), ("closest", 4, True, "True"), ("closest", 4, 2.0, "2.0"),
    ("closest", 4, "first", "'first'"), ("odd", 3, 0, "0"), ("odd", 3, 4, "4"), ("odd", 3, "none", "'none'"),
    ("rank", 4, [1, 2, 3], r"\[1, 2, 3\]"), ("rank", 4, [1, 1, 2, 3], r"\[1, 1, 2, 3\]"),
    ("rank", 4, [0, 1, 2, 3], r"\[0, 1, 2, 3\]"), ("rank", 4, 2, "2"),
    ("rank", 4, [1, 2, 3, 4, 5], r"\[1, 2, 3, 4, 5\]"),
    ("triplet", 2, 1, "1"),
])
def test_a_bad_answer_is_refused_naming_it(kind, k, answer, says):
    with pytest.raises(ConfigError, match=f"Unknown answer {says}"):
        human.answer_value(kind, k, answer)


def good_answer(kind: str, q: human.Question):
    """An answer the question allows that is not the first option (so a wrong order would show)."""
    return {"closest": 2, "odd": 3, "rank": list(range(q.k, 0, -1))}[kind]


def test_submit_undo_skip_and_never_twice(run):
    store, kind = run
    checks = store.checks("r")
    q = human.next_query(store, "r", "alice")
    while q.seq in checks:  # a real question: the checks' totals are the next test's
        human.submit(store, "r", q.seq, "alice", "skip", 10, q.token)
        q = human.next_query(store, "r", "alice")
    assert q.kind == kind and q.k == K[kind] and (q.reference is None) == (kind == "odd")
    assert len(q.texts()) == K[kind] + (kind != "odd")
    again = human.next_query(store, "r", "alice")  # a reload: the same question, a fresh token
    assert again.seq == q.seq and again.token != q.token
    assert human.submit(store, "r", q.seq, "alice", good_answer(kind, q), 1500, q.token)
    # A double click (the same token) and a second tab (another token): stored once, the first answer stands.
    assert not human.submit(store, "r", q.seq, "alice", good_answer(kind, q), 1500, q.token)
    other = 1 if kind != "rank" else list(range(1, q.k + 1))
    assert not human.submit(store, "r", q.seq, "alice", other, 1500, "other-tab")
    rows = sql_rows(store.path, "SELECT value, status, meta FROM answers WHERE seq = ? AND agent = 'human:alice'",
                    (q.seq,))
    want = {"closest": 2.0, "odd": 3.0, "rank": float(ranking_code(np.array([list(range(q.k - 1, -1, -1))]))[0])}
    assert len(rows) == 1 and rows[0][:2] == (want[kind], "ok") and json.loads(rows[0][2])["token"] == q.token
    if kind == "rank":
        assert ranking_from_code(np.array([rows[0][0]]), q.k)[0].tolist() == [3, 2, 1, 0]
    # Undo: taken back, the same question is next, and a new answer is stored.
    assert human.undo(store, "r", "alice") == q.seq
    assert store.count_answers("r", status=None) == 0
    back = human.next_query(store, "r", "alice")
    assert back.seq == q.seq
    assert human.submit(store, "r", q.seq, "alice", "skip", 900, back.token)
    # A skip is not an answer: the question goes to someone else, never back to alice.
    seen = set()
    while (nxt := human.next_query(store, "r", "alice")) is not None:
        seen.add(nxt.seq)
        human.submit(store, "r", nxt.seq, "alice", good_answer(kind, nxt), 900, nxt.token)
    assert q.seq not in seen
    bob = []  # the skipped question is still open: bob gets it (besides the checks everyone gets)
    while (nxt := human.next_query(store, "r", "bob")) is not None and q.seq not in bob:
        bob.append(nxt.seq)
        human.submit(store, "r", nxt.seq, "bob", good_answer(kind, nxt), 900, nxt.token)
    assert q.seq in bob and all(s < 0 for s in bob if s != q.seq)


def test_a_refused_answer_stores_nothing(run):
    store, kind = run
    q = human.next_query(store, "r", "alice")
    bad = {"closest": 5, "odd": 0, "rank": [1, 2, 2, 3]}[kind]
    with pytest.raises(ConfigError, match="Unknown answer"):
        human.submit(store, "r", q.seq, "alice", bad, 1000, q.token)
    with pytest.raises(ConfigError, match="not in the annotation queue"):
        human.submit(store, "r", 99, "alice", 1, 1000, q.token)
    assert store.count_answers("r", status=None) == 0 and not store.annotator_stats("r")
    assert human.next_query(store, "r", "alice").seq == q.seq  # still theirs to answer


def test_checks_are_scored_in_the_totals_and_the_flip_rate(run, target):
    """Right on every check but the first (rank: right first place, the rest in any order), checks are
    counted in the running totals, in :func:`check_accuracy`, after a rebuild, and in the flip rate."""
    store, kind = run
    checks = store.checks("r")
    wrong, n = None, 0
    while (q := human.next_query(store, "r", "carol")) is not None:
        if q.seq in checks:
            first = checks[q.seq][1]
            j = int(first) if kind != "rank" else int(first) // math.factorial(q.k - 1) + 1
            if wrong is None:  # the first check answered wrongly
                wrong = q.seq
                answer = (j % q.k) + 1 if kind != "rank" else [(j % q.k) + 1, *[x for x in range(1, q.k + 1)
                                                                                if x != (j % q.k) + 1]]
            else:
                answer = j if kind != "rank" else [j, *sorted((x for x in range(1, q.k + 1) if x != j),
                                                              reverse=n % 2 == 0)]
        else:
            answer = exact_answer(store.load_queries("r", [q.seq]), target.factor)
        human.submit(store, "r", q.seq, "carol", answer, 1000, q.token)
        n += 1
    assert n == 25
    (rec,) = human.check_accuracy(store, "r")
    assert (rec["checks"], rec["correct"]) == (5, 4)
    (row,) = human.annotator_summary(store, "r")
    assert (row["checks"], row["correct"], row["answers"]) == (5, 4, 20)
    store.rebuild_crowd_totals("r")  # the SQL rebuild agrees with the running totals
    assert [(r["checks"], r["correct"]) for r in store.annotator_stats("r")] == [(5, 4)]
    agent = human.People("human", store, kind=kind, k=K[kind])
    agent.start(Ledger(store, "r"), resumed=True)
    alpha, beta = CHECK_PRIOR
    wrong_rate = (1 + alpha) / (5 + alpha + beta)
    assert agent.noise() == {"human:carol": pytest.approx(wrong_rate / (1 - check_chance(kind, K[kind])))}
    assert check_chance(kind, K[kind]) == (0.25 if kind == "rank" else 0.0)


def test_the_flip_rate_counts_a_flipped_ranking_that_still_passes():
    alpha, beta = CHECK_PRIOR
    assert flip_rate_from_checks(10, 8, 0.25) == pytest.approx((2 + alpha) / (10 + alpha + beta) / 0.75)
    assert flip_rate_from_checks(10, 8) == flip_rate_from_checks(10, 8, 0.0)
    with pytest.raises(ConfigError, match="chance"):
        flip_rate_from_checks(10, 8, 1.0)


def test_codes_with_first_are_the_rankings_that_put_it_first():
    for j in range(4):
        lo, hi = codes_with_first(j, 4)
        firsts = ranking_from_code(np.arange(lo, hi + 1), 4)[:, 0]
        assert (firsts == j).all() and hi - lo + 1 == 6


def test_a_database_from_before_migration_10_keeps_its_checks(tmp_path, target):
    """A triplet queue written before migration 10 (checks without a range): its totals rebuild without the
    column (as migration 7 does on an older database), and once opened its checks score as before."""
    import sqlite_utils

    from fbloop.store.crowd import rebuild_totals

    path = tmp_path / "old.db"
    with Store(path) as store:
        store.create_run("r", kind="triplet", p=target.p, budget=10, config={"target": SPEC}, target={}, anchor=None)
        human.queue(store, "r", make_design(DesignConfig(name="triplet", mu=0.7), target, 0).queries(0, 10),
                    check_rate=0.2)
        checks = store.checks("r")

        def answer(n: int) -> None:
            for _ in range(n):
                q = human.next_query(store, "r", "ann")
                want = checks.get(q.seq, (None, 1.0))[1]
                human.submit(store, "r", q.seq, "ann", "first" if want == 1.0 else "second", 500, q.token)

        answer(6)
        want = store.annotator_stats("r")
    db = sqlite_utils.Database(path)  # undo migration 10
    db.execute("ALTER TABLE checks DROP COLUMN expected_hi")
    db.execute("DELETE FROM _migrations WHERE id = 10")
    rebuild_totals(db, "r")
    db.conn.commit()
    db.close()
    with Store(path) as store:
        assert 10 in {r[0] for r in store.db.execute("SELECT id FROM _migrations")}
        assert store.annotator_stats("r") == want
        answer(6)
        assert [(r["checks"], r["correct"]) for r in store.annotator_stats("r")] == [(len(checks), len(checks))]


def test_a_people_run_of_tuples_learns_from_the_form(tmp_path):
    """The loop queues rank-4 questions for people, three people answer them through the form's functions,
    and the run, run again, learns from them (in process: the CLI's run with --watch, whose PCC snapshots
    rise as answers arrive, is the slow test below)."""
    from fbloop.learners import LearnerConfig
    from fbloop.loop import RunConfig, run_loop

    cfg = RunConfig(target=SPEC, design=DesignConfig(name="rank", k=4), agent="human", budget=80, check_rate=0.1,
                    learner_config=LearnerConfig(rank=3, final_steps=300, polish=False), rfm_mse=False)
    factor = load_target(SPEC).factor
    with Store(tmp_path / "h.db") as store:
        first = run_loop(cfg, store, run_id="h")
        assert first.pcc is None and store.run_kinds()["h"] == "rank" and store.get_run("h")["status"] == "waiting"
        n = 0
        while (q := human.next_query(store, "h", f"p{n % 3}")) is not None:
            n += human.submit(store, "h", q.seq, f"p{n % 3}", exact_answer(store.load_queries("h", [q.seq]), factor),
                              700, q.token)
        full = run_loop(cfg, store, run_id="h")
        assert full.answers == 80 and full.extra["learned"] == 80 and store.get_run("h")["status"] == "done"
        assert full.pcc > 0.9  # 80 exact rankings of 4 at p = 8, rank 3 (0.99 seen)
        assert full.extra["activations_shown"] == 80 * 5  # a reference and four candidates a question


@pytest.mark.slow
def test_people_answer_closest_of_4_through_the_cli_and_the_run_learns(tmp_path):
    """`fbloop run --agent human --design closest --k 4 --watch` queues, simulated people answer through
    the form's functions, the run learns as they arrive (PCC rises) and exits once all are answered (~20 s)."""
    db = tmp_path / "p.db"
    cmd = [sys.executable, "-m", "fbloop", "run", "--target", SPEC, "--design", "closest", "--k", "4", "--agent",
           "human", "--budget", "160", "--check-rate", "0.1", "--rank", "3", "--run-id", "R", "--db", str(db),
           "--watch", "--poll", "0.1", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    people = Annotators(db, pause=0.005, target=SPEC)
    try:
        deadline = time.monotonic() + 120
        while not (db.exists() and sql_rows(db, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'human_queue'")[0][0]
                   and sql_rows(db, "SELECT COUNT(*) FROM human_queue WHERE run_id = 'R'")[0][0]):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.05)
        people.start()
        out, err = proc.communicate(timeout=300)  # it exits on its own once every question is answered
    finally:
        people.stop.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert people.error is None
    result = json.loads(out.strip().splitlines()[-1])
    ok = sql_rows(db, "SELECT COUNT(*) FROM answers WHERE run_id = 'R' AND status = 'ok' AND seq >= 0")[0][0]
    assert ok == 160 and result["answers"] == ok and result["learned"] == ok and result["checks"] > 0
    assert sql_rows(db, "SELECT kind FROM runs WHERE id = 'R'") == [("closest",)]
    pcc = [r[0] for r in sql_rows(db, "SELECT pcc FROM snapshots WHERE run_id = 'R' ORDER BY id")]
    assert len(pcc) >= 3 and pcc[-1] > pcc[0] + 0.1 and result["pcc"] > 0.9, pcc
    checks = sql_rows(db, "SELECT COUNT(*), SUM(value = expected) FROM answers a JOIN checks k USING (run_id, seq)")
    assert checks[0][0] > 0 and checks[0][0] == checks[0][1]  # exact people pass every check
