"""The SQLite store: migrations, round trips, idempotent answers, export."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import ok_answers, pair_queries, sql_rows
from fbloop.errors import StoreError
from fbloop.records import Answers, Queries
from fbloop.sparse import SparseBatch
from fbloop.store import MIGRATIONS, Store, migrate, write


@pytest.fixture
def store(tmp_path: Path):
    """A fresh store with one pair run ``R`` (p = 5) and no queries."""
    with Store(tmp_path / "s.db") as db:
        db.create_run("R", kind="pair", p=5, budget=100, config={"x": 1}, target={"name": "t"},
                      anchor=SparseBatch(np.zeros((1, 1), np.int64), np.ones((1, 1)), 5))
        yield db


# ---------------------------------------------------------------- migrations


def test_new_db_gets_every_migration_and_reopening_applies_none(tmp_path):
    path = tmp_path / "m.db"
    with Store(path) as db:
        ids = [r[0] for r in db.db.execute("SELECT id FROM _migrations ORDER BY id")]
        assert ids == [m[0] for m in MIGRATIONS]
        assert {"runs", "queries", "answers", "snapshots", "factors"} <= set(db.db.table_names())
        assert migrate(db.db) == []  # already current
    with Store(path) as db:
        assert migrate(db.db) == []
        assert db.db.execute("SELECT COUNT(*) FROM _migrations").fetchone()[0] == len(MIGRATIONS)


def test_wal_journal_mode(tmp_path):
    with Store(tmp_path / "w.db") as db:
        assert db.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # WAL is a property of the file: a plain connection sees it too
    con = sqlite3.connect(tmp_path / "w.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_a_writer_waits_for_another_instead_of_failing(store):
    """Two connections writing at once (an app's double click): the second queues behind the first.

    A deferred transaction that read its snapshot before the other committed could not upgrade to a
    write afterwards ("database is locked" at once); an IMMEDIATE one takes the lock before reading.
    """
    store.add_queries("R", pair_queries(0, 4))
    holding, done = threading.Event(), []

    def slow_writer() -> None:
        with Store(store.path) as other, write(other.db):
            other.db.execute("UPDATE runs SET status = 'busy' WHERE id = 'R'")
            holding.set()
            time.sleep(0.5)
        done.append(time.monotonic())

    thread = threading.Thread(target=slow_writer)
    thread.start()
    holding.wait(5)
    assert store.add_answers("R", ok_answers([0, 1])) == 2  # waits for the other commit, then writes
    stored = time.monotonic()
    thread.join()
    assert done and stored >= done[0] - 0.05
    assert store.count_answers("R") == 2


def test_a_writer_held_up_past_the_busy_timeout_tries_again_and_writes(store):
    """One busy timeout is not the end: the store tries again (within WRITE_WAIT_S) and the write lands."""
    store.add_queries("R", pair_queries(0, 4))
    store.db.execute("PRAGMA busy_timeout=50")
    holding = threading.Event()

    def holder() -> None:
        with Store(store.path) as other, write(other.db):
            other.db.execute("UPDATE runs SET status = 'busy' WHERE id = 'R'")
            holding.set()
            time.sleep(0.6)  # twelve busy timeouts

    thread = threading.Thread(target=holder)
    thread.start()
    holding.wait(5)
    assert store.add_answers("R", ok_answers([0, 1])) == 2
    thread.join()
    assert store.count_answers("R") == 2


def test_a_writer_held_up_past_the_whole_wait_gets_a_store_error_and_writes_nothing(store, monkeypatch):
    from fbloop.store import transactions

    monkeypatch.setattr(transactions, "WRITE_WAIT_S", 0.3)
    store.add_queries("R", pair_queries(0, 4))
    store.db.execute("PRAGMA busy_timeout=50")
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with Store(store.path) as other, write(other.db):
            other.db.execute("UPDATE runs SET status = 'busy' WHERE id = 'R'")
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    holding.wait(5)
    try:
        with pytest.raises(StoreError, match="database is busy"):
            store.add_answers("R", ok_answers([0, 1]))
    finally:
        release.set()
        thread.join()
    assert store.count_answers("R") == 0
    assert store.add_answers("R", ok_answers([0, 1])) == 2  # the same answers, once the lock is free


def test_future_migration_is_refused(tmp_path):
    path = tmp_path / "f.db"
    Store(path).close()
    con = sqlite3.connect(path)
    con.execute("INSERT INTO _migrations VALUES (999, 'from the future', 0)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="999"):
        Store(path)


def test_non_sqlite_file_is_refused_naming_the_path(tmp_path):
    path = tmp_path / "noise.db"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(StoreError) as info:
        Store(path)
    assert str(path) in str(info.value)


def test_missing_folder_is_refused(tmp_path):
    path = tmp_path / "nowhere" / "x.db"
    with pytest.raises(StoreError, match="nowhere"):
        Store(path)
    assert not path.parent.exists()


# ---------------------------------------------------------------- round trips


@st.composite
def sparse_batches(draw, n: int, p: int):
    s = draw(st.integers(1, p))
    idx = np.array([draw(st.permutations(range(p)))[:s] for _ in range(n)], dtype=np.int64).reshape(n, s)
    vals = draw(st.lists(st.one_of(st.just(0.0), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)),
                         min_size=n * s, max_size=n * s))
    return SparseBatch(idx, np.array(vals, dtype=np.float64).reshape(n, s), p)


@st.composite
def query_sets(draw):
    kind = draw(st.sampled_from(["pair", "triplet"]))
    p = draw(st.integers(1, 7))
    n = draw(st.integers(1, 12))
    seq = np.array(sorted(draw(st.sets(st.integers(0, 500), min_size=n, max_size=n))), dtype=np.int64)
    a = draw(sparse_batches(n, p))
    if kind == "pair":
        return Queries("pair", seq, a)
    return Queries("triplet", seq, a, draw(sparse_batches(n, p)), draw(sparse_batches(n, p)))


@given(query_sets(), st.data())
@settings(max_examples=30, deadline=None)
def test_queries_and_answers_round_trip(queries, data):
    n = len(queries)
    values = np.array(data.draw(st.lists(st.floats(-1e9, 1e9, allow_nan=False), min_size=n, max_size=n)))
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "rt.db") as store:
        store.create_run("R", kind=queries.kind, p=queries.a.p, budget=n, config={}, target={}, anchor=None)
        assert store.record("R", queries, ok_answers(queries.seq, values)) == n

        loaded = store.load_queries("R")
        assert loaded.kind == queries.kind
        np.testing.assert_array_equal(loaded.seq, queries.seq)
        for name in ("a", "b", "c"):
            want, got = getattr(queries, name), getattr(loaded, name)
            assert (want is None) == (got is None)
            if want is not None:
                np.testing.assert_array_equal(got.to_dense(), want.to_dense())

        some = queries.seq[::2]
        part = store.load_queries("R", some)
        np.testing.assert_array_equal(part.seq, some)
        np.testing.assert_array_equal(part.a.to_dense(), queries.a.to_dense()[::2])

        chunks = list(store.iter_answered("R", chunk=5))
        assert sum(len(q) for q, _ in chunks) == n
        got_q = Queries(queries.kind, np.concatenate([q.seq for q, _ in chunks]),
                        SparseBatch.concat([q.a for q, _ in chunks]),
                        *([SparseBatch.concat([q.b for q, _ in chunks]), SparseBatch.concat([q.c for q, _ in chunks])]
                          if queries.kind == "triplet" else []))
        got_v = np.concatenate([a.value for _, a in chunks])
        order = np.argsort(got_q.seq)
        np.testing.assert_array_equal(got_q.seq[order], queries.seq)
        np.testing.assert_array_equal(got_v[order], values)  # bit-identical floats
        for name in ("a", "b", "c"):
            want = getattr(queries, name)
            if want is not None:
                np.testing.assert_array_equal(getattr(got_q, name).to_dense()[order], want.to_dense())
        for q, a in chunks:
            np.testing.assert_array_equal(q.seq, a.seq)
            assert a.agent == "oracle" and set(a.status) == {"ok"}


def test_factor_and_anchor_round_trip(store):
    u = np.random.default_rng(3).standard_normal((5, 2))
    store.save_factor("R", u)
    np.testing.assert_array_equal(store.load_factor("R"), u)
    store.save_factor("R", 2 * u)  # replaced, not duplicated
    np.testing.assert_array_equal(store.load_factor("R"), 2 * u)
    assert store.load_factor("other") is None
    run = store.get_run("R")
    assert run["config"] == {"x": 1} and run["target"] == {"name": "t"}
    np.testing.assert_array_equal(run["anchor"].to_dense(), [[1, 0, 0, 0, 0]])
    assert store.get_run("nope") is None
    with pytest.raises(StoreError, match="nope"):
        store.require_run("nope")


# ---------------------------------------------------------------- idempotency


def test_recording_twice_stores_once(store):
    q = pair_queries(0, 10)
    a = ok_answers(q.seq)
    assert store.record("R", q, a) == 10
    assert store.record("R", q, a) == 0
    assert store.add_answers("R", a) == 0
    assert store.add_queries("R", q) == 0
    assert store.count_answers("R") == 10
    assert sql_rows(store.path, "SELECT COUNT(*) FROM queries")[0][0] == 10
    # another attempt or agent is a new answer
    assert store.add_answers("R", a, attempt=1) == 10
    assert store.add_answers("R", ok_answers(q.seq, agent="human")) == 10
    assert store.count_answers("R") == 30
    dup = sql_rows(store.path, "SELECT run_id, seq, agent, attempt FROM answers "
                               "GROUP BY run_id, seq, agent, attempt HAVING COUNT(*) > 1")
    assert dup == []


def test_answers_to_unknown_queries_are_refused(store):
    store.add_queries("R", pair_queries(0, 4))
    with pytest.raises(StoreError, match="7"):
        store.add_answers("R", ok_answers([2, 3, 7]))
    assert store.count_answers("R", status=None) == 0  # the transaction rolled back whole
    with pytest.raises(StoreError):
        store.add_answers("other-run", ok_answers([0]))


def test_invalid_answers_are_kept_but_not_used(store):
    q = pair_queries(0, 4)
    answers = Answers("llm", q.seq, np.array([1.5, np.nan, 2.5, np.nan]),
                      np.array(["ok", "invalid", "ok", "skipped"]),
                      raw=["1.5", "I think it's about twelve-ish", "2.5", None],
                      meta=[{"latency": 0.1}, None, None, None])
    assert store.record("R", q, answers) == 4
    assert store.count_answers("R") == 2
    assert store.count_answers("R", status="invalid") == 1
    assert store.count_answers("R", status=None) == 4
    ((_, got),) = list(store.iter_answered("R"))
    np.testing.assert_array_equal(got.seq, [0, 2])
    np.testing.assert_array_equal(got.value, [1.5, 2.5])
    rows = {r["seq"]: r for r in store.answer_rows("R")}
    assert rows[1]["status"] == "invalid" and rows[1]["value"] is None
    assert rows[1]["raw"] == "I think it's about twelve-ish"
    assert json.loads(rows[0]["meta"]) == {"latency": 0.1}
    # every status is final: the loop will not ask these again
    np.testing.assert_array_equal(store.answered("R", 0, 10), [0, 1, 2, 3])
    np.testing.assert_array_equal(store.answered("R", 0, 10, agent="oracle"), [])
    assert store.runs()[0]["answers"] == 2


def test_invalid_only_positions_are_asked_again_one_attempt_later(store):
    q = pair_queries(0, 5)
    first = Answers("llm", q.seq, np.array([1.0, np.nan, np.nan, np.nan, 2.0]),
                    np.array(["ok", "invalid", "invalid", "skipped", "ok"]), raw=["1", "?", "??", None, "2"])
    swap = Answers("llm#swap", q.seq, np.array([1.0, np.nan, 3.0, np.nan, np.nan]),
                   np.array(["ok", "invalid", "ok", "invalid", "invalid"]))
    store.record("R", q, [first, swap])
    assert store.invalid_only("R", 0, 5, ["llm"]) == {1: 1, 2: 1}
    assert store.invalid_only("R", 0, 5, ["llm", "llm#swap"]) == {1: 1}  # an ok in either order stands
    assert store.invalid_only("R", 0, 5, ["oracle"]) == {}
    again = Answers("llm", np.array([1, 2]), np.array([np.nan, 4.0]), np.array(["invalid", "ok"]), raw=["?!", "4"])
    assert store.record_attempts("R", q.select(np.array([1, 2])), [again], {1: 1, 2: 1}) == 2
    assert store.record_attempts("R", q.select(np.array([1, 2])), [again], {1: 1, 2: 1}) == 0  # idempotent
    assert store.invalid_only("R", 0, 5, ["llm"]) == {1: 2}  # still invalid: the next try is attempt 2
    rows = [(r["seq"], r["attempt"], r["status"], r["raw"]) for r in store.answer_rows("R") if r["agent"] == "llm"]
    assert (1, 0, "invalid", "?") in rows and (1, 1, "invalid", "?!") in rows and (2, 1, "ok", "4") in rows
    assert store.count_answers("R") == 5  # 0, 4 and the re-asked 2 (llm); 0 and 2 (swap)


# ---------------------------------------------------------------- export


def _run_with_answers(store):
    q = pair_queries(0, 6)
    answers = Answers("oracle", q.seq, np.array([0.5, 1.0, np.nan, 2.0, 3.0, 4.0]),
                      np.array(["ok", "ok", "invalid", "ok", "ok", "ok"]), raw=[None, None, "??", None, None, None])
    store.record("R", q, answers)
    return q, answers


def test_export_csv_and_jsonl(store, tmp_path):
    q, answers = _run_with_answers(store)
    dense = q.a.to_dense()

    assert store.export("R", tmp_path / "a.csv") == 6
    with open(tmp_path / "a.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["seq"]) for r in rows] == list(range(6))
    for r in rows:
        s = int(r["seq"])
        idx, val = json.loads(r["a_indices"]), json.loads(r["a_values"])
        row = np.zeros(5)
        np.add.at(row, idx, val)
        np.testing.assert_array_equal(row, dense[s])
        assert r["kind"] == "pair" and r["b_indices"] == "" and r["run_id"] == "R"
    assert rows[2]["status"] == "invalid" and rows[2]["raw"] == "??" and rows[2]["value"] == ""
    assert float(rows[3]["value"]) == 2.0

    assert store.export("R", tmp_path / "a.jsonl") == 6
    lines = (tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6
    recs = [json.loads(x) for x in lines]
    for rec in recs:
        row = np.zeros(5)
        np.add.at(row, rec["a_indices"], rec["a_values"])
        np.testing.assert_array_equal(row, dense[rec["seq"]])
        assert rec["b_indices"] is None and rec["basis"] == "feature" and rec["held_out"] is False
    assert [r["value"] for r in recs] == [0.5, 1.0, None, 2.0, 3.0, 4.0]
    assert store.export("R", tmp_path / "a.txt", fmt="jsonl") == 6  # explicit format wins
    assert not list(tmp_path.glob("*.partial"))


def test_export_triplets(tmp_path):
    with Store(tmp_path / "t.db") as db:
        db.create_run("T", kind="triplet", p=4, budget=2, config={}, target={}, anchor=None)
        b = SparseBatch(np.array([[0, 1], [2, 3]]), np.array([[1.0, 2.0], [3.0, 0.0]]), 4)
        db.record("T", Queries("triplet", np.array([0, 1]), b, b, b), ok_answers([0, 1], [1.0, -1.0]))
        assert db.export("T", tmp_path / "t.jsonl") == 2
    recs = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert recs[1]["c_indices"] == [2] and recs[1]["c_values"] == [3.0]  # padding is not stored
    assert [r["value"] for r in recs] == [1.0, -1.0]


def test_export_unknown_format_and_run_leave_nothing(store, tmp_path):
    _run_with_answers(store)
    with pytest.raises(StoreError, match="xlsx"):
        store.export("R", tmp_path / "a.xlsx")
    with pytest.raises(StoreError, match="nope"):
        store.export("nope", tmp_path / "b.csv")
    assert [f for f in os.listdir(tmp_path) if not f.startswith("s.db")] == []


def test_export_parquet_read_back_by_pandas(store, tmp_path):
    pd = pytest.importorskip("pandas")
    from fbloop.store.export import COLUMNS

    q, _ = _run_with_answers(store)
    assert store.export("R", tmp_path / "a.parquet") == 6
    df = pd.read_parquet(tmp_path / "a.parquet")
    assert list(df.columns) == list(COLUMNS)
    assert df["seq"].tolist() == list(range(6)) and set(df["basis"]) == {"feature"}
    assert df["held_out"].dtype == bool and not df["held_out"].any()
    assert df["status"].tolist()[2] == "invalid" and np.isnan(df["value"][2]) and df["value"][3] == 2.0
    dense = q.a.to_dense()
    for _, r in df.iterrows():
        row = np.zeros(5)
        np.add.at(row, np.asarray(r["a_indices"]), np.asarray(r["a_values"]))
        np.testing.assert_array_equal(row, dense[r["seq"]])
    import pyarrow.parquet as pq
    header = json.loads(pq.read_schema(tmp_path / "a.parquet").metadata[b"fbloop"])
    sidecar = json.loads((tmp_path / "a.parquet.meta.json").read_text())
    assert header["run_id"] == sidecar["run_id"] == "R" and sidecar["rows"] == 6 and sidecar["format"] == "parquet"
    assert sidecar["basis"] == "feature" and "anchor" in sidecar and sidecar["columns"] == list(COLUMNS)


def test_export_marks_eigen_basis_held_out_and_nested_meta(tmp_path):
    from fbloop import seeding

    with Store(tmp_path / "e.db") as db:
        anchor = SparseBatch(np.array([[0, 1]]), np.array([[1.0, 1.0]]), 5)
        db.create_run("E", kind="triplet", p=5, budget=40, anchor=anchor, target={"name": "t"},
                      config={"design": {"name": "eigen"}, "holdout": 0.5, "seed": 3})
        b = SparseBatch(np.arange(40)[:, None] % 5, np.ones((40, 1)), 5)
        ans = Answers("llm", np.arange(40), np.ones(40), np.array(["ok"] * 40), meta=[{"latency": 1.5}] * 40)
        db.record("E", Queries("triplet", np.arange(40), b, b, b), ans)
        assert db.export("E", tmp_path / "e.jsonl") == 40
    recs = [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert {r["basis"] for r in recs} == {"eigen"} and recs[0]["meta"] == {"latency": 1.5}
    assert [r["held_out"] for r in recs] == seeding.held_out(3, np.arange(40), 0.5).tolist()
    assert 0 < sum(r["held_out"] for r in recs) < 40
    side = json.loads((tmp_path / "e.jsonl.meta.json").read_text())
    assert side["anchor"] == {"indices": [0, 1], "values": [1.0, 1.0]} and side["holdout_share"] == 0.5


def test_export_cblearn_triplets(tmp_path):
    with Store(tmp_path / "t.db") as db:
        db.create_run("T", kind="triplet", p=4, budget=3, config={}, target={}, anchor=None)
        a = SparseBatch(np.array([[0], [0], [1]]), np.ones((3, 1)), 4)
        b = SparseBatch(np.array([[1], [2], [2]]), np.ones((3, 1)), 4)
        c = SparseBatch(np.array([[2], [1], [3]]), np.ones((3, 1)), 4)
        db.record("T", Queries("triplet", np.arange(3), a, b, c), ok_answers([0, 1, 2], [1.0, -1.0, 0.0]))
        assert db.export("T", tmp_path / "t.npz") == 2  # the tie is left out
        with pytest.raises(StoreError, match="triplet runs"):
            db.create_run("P", kind="pair", p=4, budget=1, config={}, target={}, anchor=None)
            db.export("P", tmp_path / "p.npz")
    z = np.load(tmp_path / "t.npz")
    assert z["queries"].shape == (2, 3) and z["responses"].tolist() == [True, False]
    objs = [(int(i[0]), float(v[0])) for i, v in zip(z["objects_indices"], z["objects_values"])]
    assert [[objs[k][0] for k in row] for row in z["queries"]] == [[0, 1, 2], [0, 2, 1]]
    assert z["seq"].tolist() == [0, 1]


def test_export_factor_and_as_saelens(tmp_path):
    from safetensors.numpy import load_file

    from fbloop.targets.checkpoints import load_saelens
    from fbloop.store.export import export_factor, export_factor_saelens

    u = np.random.default_rng(0).standard_normal((6, 2))
    with Store(tmp_path / "f.db") as db:
        db.create_run("F", kind="pair", p=6, budget=1, config={}, target={"name": "t"}, anchor=None)
        with pytest.raises(StoreError, match="no saved factor"):
            export_factor(db, "F", tmp_path / "u.safetensors")
        db.save_factor("F", u)
        assert export_factor(db, "F", tmp_path / "u.safetensors") == {"U": [6, 2], "phi_hat": True}
        export_factor_saelens(db, "F", tmp_path / "sae")
    got = load_file(tmp_path / "u.safetensors")
    np.testing.assert_allclose(got["U"], u, rtol=1e-6)
    np.testing.assert_allclose(got["phi_hat"], u @ u.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(load_saelens(tmp_path / "sae").phi(), u @ u.T, rtol=1e-5, atol=1e-6)


_META_VALUES = st.one_of(st.text(max_size=6), st.sampled_from(["%s", "%", "%%d", "é\u2028\"\\"]), st.integers(),
                         st.booleans(), st.none(), st.floats(allow_nan=True, allow_infinity=True),
                         st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
_META_KEYS = st.sampled_from(["k", "%d", "é", "a b", "1"])


@settings(max_examples=300, deadline=None)
@given(shared=st.lists(_META_KEYS, max_size=4, unique=True),
       rows=st.lists(st.tuples(st.integers(0, 9), st.lists(_META_VALUES, min_size=4, max_size=4)), max_size=8))
def test_encode_metas_writes_json_dumps_texts(shared, rows):
    """Answers' metas are written a column at a time; the stored texts are json.dumps' own, byte for byte."""
    from fbloop.store.codec import encode_metas

    metas: list = []
    for kind, values in rows:
        if kind == 0:
            metas.append(None)
        elif kind == 1:
            metas.append({1: values[0]})  # a key json.dumps turns into a string
        elif kind == 2:
            metas.append(dict(zip(reversed(shared), values)))  # the same keys in another order
        else:
            metas.append(dict(zip(shared, values if kind < 6 else [values[0]] * 4)))  # repeated values too
    assert encode_metas(metas) == [None if m is None else json.dumps(m) for m in metas]
