"""People in the loop: the annotation queue, answers stored once, attention checks."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fbloop.agents import OracleAgent, people as human
from fbloop.agents.oracle import triplet_margins
from fbloop.agents.questions import LOPSIDED
from fbloop.cli import main
from fbloop.errors import ConfigError
from fbloop.learners import LearnerConfig
from fbloop.loop import RunConfig, run_loop
from fbloop.queries.catalogue import make_design
from fbloop.queries.designs import DesignConfig
from fbloop.store import Store
from fbloop.targets.load import load_target

from conftest import pair_queries, sql_rows

SPEC = "synthetic:p=8,rank=3"


@pytest.fixture()
def target():
    return load_target(SPEC)


@pytest.fixture()
def store(tmp_path, target):
    with Store(tmp_path / "runs.db") as s:
        s.create_run("r", kind="triplet", p=target.p, budget=40, config={"target": SPEC}, target={}, anchor=None)
        yield s


def triplets(target, start=0, stop=40):
    return make_design(DesignConfig(name="triplet", mu=0.7), target, seed=0).queries(start, stop)


def answer_all(store, annotator, choice="first", limit=1000):
    n = 0
    while (q := human.next_query(store, "r", annotator)) is not None and n < limit:
        human.submit(store, "r", q.seq, annotator, choice, 10, q.token)
        n += 1
    return n


def test_queue_mixes_in_checks_at_negative_positions(store, target):
    info = human.queue(store, "r", triplets(target), check_rate=0.2)
    assert info == {"queued": 40, "checks": 10}  # 10 of 50 = 0.2
    order = store.queued("r")
    checks = store.checks("r")
    assert sorted(checks) == list(range(-10, 0))
    assert order[0] >= 0  # a real question comes first
    assert [s for s in order if s >= 0] == list(range(40))  # real ones keep the design's order
    assert set(order) == set(range(40)) | set(checks)
    # Queueing again (a resumed run) changes nothing; more queries append after the old ones.
    assert human.queue(store, "r", triplets(target), check_rate=0.2) == {"queued": 0, "checks": 0}
    assert human.queue(store, "r", triplets(target, 0, 50), check_rate=0.2)["queued"] == 10
    new = store.queued("r")
    assert list(new[:50]) == list(order) and min(store.checks("r")) < -10


def test_identical_checks_know_their_answer(store, target):
    human.queue(store, "r", triplets(target), check_rate=0.3)
    checks = store.checks("r")
    q = store.load_queries("r", np.array(sorted(checks)))
    for i, s in enumerate(q.seq):
        kind, expected = checks[int(s)]
        assert kind == "identical"
        same = q.b if expected == 1 else q.c
        assert np.array_equal(q.a.to_dense()[i], same.to_dense()[i])


def test_lopsided_checks_agree_with_the_oracle(store, target):
    human.queue(store, "r", triplets(target, 0, 200), check_rate=0.3, factor=target.factor)
    checks = store.checks("r")
    lop = sorted(s for s, (kind, _) in checks.items() if kind == "lopsided")
    assert lop, "expected some lopsided checks"
    q = store.load_queries("r", np.array(lop))
    delta, total = triplet_margins(q.a, q.b, q.c, target.factor)
    assert np.all(np.abs(delta) >= LOPSIDED * total - 1e-12)
    assert [checks[int(s)][1] for s in q.seq] == list(np.sign(delta))


@pytest.mark.parametrize("rate", [-0.1, 0.6])
def test_queue_rejects_bad_input(store, target, rate):
    with pytest.raises(ConfigError, match="check rate"):
        human.queue(store, "r", triplets(target), check_rate=rate)
    with pytest.raises(ConfigError, match="triplet"):
        human.queue(store, "r", pair_queries(0, 5, p=8))


def test_next_query_leases_and_resumes(store, target):
    human.queue(store, "r", triplets(target), check_rate=0.2)
    a, b = human.next_query(store, "r", "alice"), human.next_query(store, "r", "bob")
    checks = store.checks("r")
    assert a.token != b.token and (a.seq != b.seq or a.seq in checks)  # one answer wanted: not both at once
    again = human.next_query(store, "r", "alice")  # a reload or a second tab: the same triplet
    assert again.seq == a.seq and again.token != a.token
    assert human.submit(store, "r", a.seq, "alice", "first", 1234.5, a.token)
    assert human.next_query(store, "r", "alice").seq != a.seq
    texts = a.texts()
    assert set(texts) == {"reference", "first", "second"} and "feature" in texts["reference"]


def test_an_expired_lease_frees_the_triplet(store, target):
    human.queue(store, "r", triplets(target, 0, 1), check_rate=0.0)
    seq = store.assign("r", "human:alice", now=1000.0)
    assert store.assign("r", "human:bob", now=1000.0 + human.LEASE_S - 1) is None  # still alice's
    assert store.assign("r", "human:bob", now=1000.0 + human.LEASE_S + 1) == seq


def simulate(store, people: int, each: int, choice: str = "first") -> set[int]:
    """``people`` annotators taking turns, ``each`` answers apiece; returns the positions answered."""
    seen: dict[int, set[str]] = {}
    for _ in range(each):
        for i in range(people):
            q = human.next_query(store, "r", f"ann{i}")
            if q is None:
                continue
            assert human.submit(store, "r", q.seq, f"ann{i}", choice, 900, q.token)
            seen.setdefault(q.seq, set()).add(f"ann{i}")
    return seen


def test_overlap_one_spreads_the_work(store, target):
    human.queue(store, "r", triplets(target, 0, 700), check_rate=0.0)
    seen = simulate(store, 34, 20)
    assert sum(len(v) for v in seen.values()) == 680
    assert len(seen) >= 660  # every answer a different triplet
    assert human.progress(store, "r", "ann0")["remaining"] == 20 and human.waiting(store, "r") is True


def test_overlap_three_gets_exactly_three_people_per_triplet(store, target):
    human.queue(store, "r", triplets(target, 0, 40), check_rate=0.1)
    human.set_assignment(store, "r", overlap=3)
    seen = simulate(store, 10, 20)
    checks = store.checks("r")
    real = {s: v for s, v in seen.items() if s not in checks}
    assert len(real) == 40 and {len(v) for v in real.values()} == {3}
    assert all(len(seen[c]) == 10 for c in checks)  # checks go to everyone


def test_a_skipped_triplet_goes_to_someone_else(store, target):
    human.queue(store, "r", triplets(target, 0, 2), check_rate=0.0)
    q = human.next_query(store, "r", "alice")
    assert human.submit(store, "r", q.seq, "alice", "skip", None, q.token)
    other = human.next_query(store, "r", "bob")
    assert human.submit(store, "r", other.seq, "bob", "first", 1, other.token)
    assert human.next_query(store, "r", "bob").seq == q.seq  # alice's skip comes back, to bob
    assert human.next_query(store, "r", "alice") is None  # never back to alice


def test_undo_takes_the_last_answer_back_and_asks_it_again(store, target, tmp_path):
    human.queue(store, "r", triplets(target, 0, 5), check_rate=0.0)
    q = human.next_query(store, "r", "alice")
    human.submit(store, "r", q.seq, "alice", "first", 500, q.token)
    assert human.progress(store, "r", "alice")["answered"] == 1
    assert human.undo(store, "r", "alice") == q.seq
    assert human.undo(store, "r", "alice") is None  # only the latest, once
    assert human.progress(store, "r", "alice")["answered"] == 0
    assert sql_rows(tmp_path / "runs.db", "SELECT COUNT(*) FROM answers") == [(0,)]
    back = human.next_query(store, "r", "alice")
    assert back.seq == q.seq and human.submit(store, "r", back.seq, "alice", "second", 800, back.token)
    assert store.assignment("r")["filled"] == 1


def test_names_are_one_identity_whatever_the_case_or_form(store, target):
    assert human.agent_name("Alice") == human.agent_name(" alice ") == "human:alice"
    assert human.agent_name("ＡＬＩＣＥ") == "human:alice"  # full-width letters, NFKC
    with pytest.raises(ConfigError, match="one script"):
        human.agent_name("\u0430lice")  # Cyrillic а


def test_a_blocked_annotator_leaves_the_learner_but_stays_in_the_store(store, target):
    human.queue(store, "r", triplets(target, 0, 6), check_rate=0.0)
    simulate(store, 2, 3)
    assert sum(len(a) for _, a in store.iter_answered("r")) == 6
    human.block(store, "r", "ANN1")
    assert sum(len(a) for _, a in store.iter_answered("r")) == 3 and store.count_answers("r") == 6
    assert human.next_query(store, "r", "ann1") is None
    assert [r["blocked"] for r in human.annotator_summary(store, "r")] == [False, True]
    human.block(store, "r", "ann1", blocked=False)
    assert sum(len(a) for _, a in store.iter_answered("r")) == 6


def test_descriptions_and_placeholders_reach_the_question(store, target):
    human.queue(store, "r", triplets(target), check_rate=0.0)
    desc = tuple(f"concept number {i}" if i % 2 else "" for i in range(target.p))
    text = "\n".join(human.next_query(store, "r", "alice", desc).texts().values())
    assert "concept number" in text or "no description available" in text
    assert all(('"concept number' in line) == (int(line.split()[2]) % 2 == 1)
               for line in text.splitlines())


def test_submit_maps_answers_and_keeps_meta(store, target, tmp_path):
    human.queue(store, "r", triplets(target), check_rate=0.0)
    for choice, value in (("first", 1.0), ("second", -1.0), ("equal", 0.0)):
        q = human.next_query(store, "r", "alice")
        assert human.submit(store, "r", q.seq, "alice", choice, 700, q.token)
        (row,) = sql_rows(tmp_path / "runs.db", "SELECT agent, value, status, meta FROM answers WHERE seq = ?",
                          (q.seq,))
        assert row[:3] == ("human:alice", value, "ok")
        assert json.loads(row[3]) == {"annotator": "alice", "response_ms": 700, "token": q.token}


def test_a_double_submit_stores_once(store, target, tmp_path):
    human.queue(store, "r", triplets(target), check_rate=0.0)
    q = human.next_query(store, "r", "alice")
    assert human.submit(store, "r", q.seq, "alice", "first", 500, q.token) is True
    assert human.submit(store, "r", q.seq, "alice", "first", 510, q.token) is False  # double click
    assert human.submit(store, "r", q.seq, "alice", "second", 900, "another-tab") is False  # second tab
    rows = sql_rows(tmp_path / "runs.db", "SELECT value, meta FROM answers WHERE seq = ?", (q.seq,))
    assert len(rows) == 1 and rows[0][0] == 1.0 and json.loads(rows[0][1])["token"] == q.token
    assert human.progress(store, "r", "alice")["answered"] == 1


def test_skip_is_stored_and_never_asked_again(store, target):
    human.queue(store, "r", triplets(target, 0, 3), check_rate=0.0)
    q = human.next_query(store, "r", "alice")
    assert human.submit(store, "r", q.seq, "alice", "skip", None, q.token)
    assert human.next_query(store, "r", "alice").seq != q.seq
    assert answer_all(store, "alice") == 2
    assert human.next_query(store, "r", "alice") is None
    prog = human.progress(store, "r", "alice")
    assert (prog["answered"], prog["skipped"], prog["remaining"]) == (2, 1, 1)  # the skipped one waits for others
    assert store.count_answers("r", status="skipped") == 1
    assert sum(len(a) for _, a in store.iter_answered("r")) == 2  # a skip teaches nothing


def test_attention_check_accuracy_and_exclusion_from_learning(store, target):
    human.queue(store, "r", triplets(target, 0, 16), check_rate=0.2)  # 16 real + 4 checks
    checks = store.checks("r")
    wrong = sorted(checks)[0]
    skipped = sorted(checks)[1]
    while (q := human.next_query(store, "r", "alice")) is not None:
        if q.seq == skipped:
            choice = "skip"
        elif q.seq in checks:
            right = "first" if checks[q.seq][1] == 1 else "second"
            choice = ("second" if right == "first" else "first") if q.seq == wrong else right
        else:
            choice = "equal"
        human.submit(store, "r", q.seq, "alice", choice, 100, q.token)
    (rec,) = human.check_accuracy(store, "r")
    assert rec == {"agent": "human:alice", "checks": 3, "correct": 2, "skipped": 1, "accuracy": 2 / 3}
    prog = human.progress(store, "r", "alice")
    assert "check_accuracy" not in prog  # the annotator is never told which were checks
    (summary,) = human.annotator_summary(store, "r")
    assert (summary["checks"], summary["correct"]) == (3, 2) and summary["check_accuracy"] == pytest.approx(2 / 3)
    learned = np.concatenate([q.seq for q, _ in store.iter_answered("r")])
    assert sorted(learned) == list(range(16))  # no check reaches a learner
    assert store.count_answers("r") == 16


@pytest.mark.parametrize("name", ["", "   ", "x" * 41, "tab\tname\x00"])
def test_bad_annotator_names(store, name):
    with pytest.raises(ConfigError, match="annotator name"):
        human.agent_name(name)


def test_submit_rejects_what_the_form_never_asks(store, target):
    human.queue(store, "r", triplets(target, 0, 5), check_rate=0.0)
    with pytest.raises(ConfigError, match="Unknown answer"):
        human.submit(store, "r", 0, "alice", "third", 1, "t")
    with pytest.raises(ConfigError, match="not in the annotation queue"):
        human.submit(store, "r", 99, "alice", "first", 1, "t")
    with pytest.raises(ConfigError, match="token"):
        human.submit(store, "r", 0, "alice", "first", 1, "")


def test_run_loop_queues_then_learns_from_people(tmp_path):
    cfg = RunConfig(target="synthetic:p=6,rank=2", design=DesignConfig(name="triplet", mu=0.6), agent="human",
                    budget=30, check_rate=0.1, learner_config=LearnerConfig(final_steps=300, polish=False))
    target = load_target(cfg.target)
    design = make_design(cfg.design, target, cfg.seed)
    queries = design.queries(0, 30)
    truth = dict(zip(queries.seq.tolist(), OracleAgent(target.factor, design.anchor()).answer(queries).value))
    with Store(tmp_path / "h.db") as store:
        first = run_loop(cfg, store, run_id="h")
        assert first.pcc is None and store.get_run("h")["status"] == "waiting"
        assert store.queue_progress("h") == {"queued": 33, "checks": 3, "answered": 3}  # checks never hold it up
        checks = store.checks("h")
        while (q := human.next_query(store, "h", "ann")) is not None:  # a perfect annotator
            want = checks[q.seq][1] if q.seq in checks else truth[q.seq]
            human.submit(store, "h", q.seq, "ann", {1.0: "first", -1.0: "second", 0.0: "equal"}[want], 1, q.token)
        again = run_loop(cfg, store, run_id="h")
        assert again.answers == 30 and again.pcc > 0.3  # learned from the 30 answers; checks left out
        assert store.get_run("h")["status"] == "done"
        assert store.queue_progress("h")["queued"] == 33  # resuming queued nothing twice


def test_cli_queues_for_the_app(tmp_path):
    db = tmp_path / "cli.db"
    args = ["run", "--target", "synthetic:p=6,rank=2", "--design", "triplet", "--agent", "human", "--budget", "9",
            "--check-rate", "0.1", "--db", str(db), "--run-id", "people"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    assert "10 triplets queued for people (1 attention checks)" in out.output and "fbloop app" in out.output
    out = CliRunner().invoke(main, ["run", "--target", "synthetic:p=6,rank=2", "--design", "eigen", "--agent", "human",
                                    "--db", str(db)])
    assert out.exit_code == 2 and "--design triplet" in out.output


def test_cli_invites_blocks_and_refuses_open_access_beyond_localhost(tmp_path):
    db = tmp_path / "cli.db"
    args = ["run", "--target", "synthetic:p=6,rank=2", "--design", "triplet", "--agent", "human", "--budget", "9",
            "--db", str(db), "--run-id", "people"]
    assert CliRunner().invoke(main, args).exit_code == 0
    out = CliRunner().invoke(main, ["annotators", "add", "Alice", "--run", "people", "--db", str(db), "--json"])
    assert out.exit_code == 0, out.output
    info = json.loads(out.output)
    token = info["url"].split("token=")[1]
    assert info["name"] == "alice" and info["url"].startswith("http://127.0.0.1:8501/?token=a-")
    with Store(db) as store:
        assert human.sign_in(store, token) == human.Access("annotator", "alice", ("people",))
        assert token not in "".join(str(r) for r in sql_rows(db, "SELECT * FROM annotators"))  # a hash only
    out = CliRunner().invoke(main, ["annotators", "add", "bob", "--run", "nope", "--db", str(db)])
    assert out.exit_code == 2 and "nope" in out.output
    out = CliRunner().invoke(main, ["annotators", "owner", "--db", str(db)])
    with Store(db) as store:
        assert human.sign_in(store, out.output.split("token=")[1].strip()).role == "owner"
    assert CliRunner().invoke(main, ["annotators", "block", "ALICE", "--run", "people", "--db", str(db)]).exit_code == 0
    with Store(db) as store:
        assert human.sign_in(store, token).runs == ()  # blocked: the link opens nothing
    out = CliRunner().invoke(main, ["annotators", "overlap", "3", "--run", "people", "--db", str(db)])
    assert out.exit_code == 0 and "3 people per triplet" in out.output
    out = CliRunner().invoke(main, ["app", "--db", str(db), "--host", "0.0.0.0", "--open"])
    assert out.exit_code == 2 and "refusing" in out.output


def test_running_totals_equal_a_rebuild_from_the_answers(store, target):
    human.queue(store, "r", triplets(target, 0, 30), check_rate=0.2)
    human.set_assignment(store, "r", overlap=2)
    simulate(store, 5, 7)
    q = human.next_query(store, "r", "ann0")
    human.submit(store, "r", q.seq, "ann0", "skip", None, q.token)
    human.undo(store, "r", "ann1")
    before = (store.assignment("r"), store.annotator_stats("r"),
              store.db.execute("SELECT seq, taken, open FROM human_queue ORDER BY seq").fetchall())
    store.rebuild_crowd_totals("r")
    after = (store.assignment("r"), store.annotator_stats("r"),
             store.db.execute("SELECT seq, taken, open FROM human_queue ORDER BY seq").fetchall())
    assert before[0] == after[0] and before[2] == after[2]
    assert [(r["agent"], r["ok"], r["skipped"], r["checks"], r["correct"], r["ms_n"]) for r in before[1]] == \
        [(r["agent"], r["ok"], r["skipped"], r["checks"], r["correct"], r["ms_n"]) for r in after[1]]


def test_migration_7_backfills_a_queue_answered_before_it(tmp_path, target):
    """A database written before migration 7: its queue and answers get their totals when it is opened."""
    import sqlite_utils

    from fbloop.store import migrations

    path = tmp_path / "old.db"
    with Store(path) as store:
        store.create_run("r", kind="triplet", p=target.p, budget=40, config={"target": SPEC}, target={}, anchor=None)
        human.queue(store, "r", triplets(target, 0, 10), check_rate=0.2)
        for name in ("ann0", "ann1"):
            for _ in range(4):
                q = human.next_query(store, "r", name)
                human.submit(store, "r", q.seq, name, "first", 500, q.token)
        want = (store.assignment("r"), [(r["agent"], r["ok"], r["checks"]) for r in store.annotator_stats("r")])
    db = sqlite_utils.Database(path)  # undo migration 7, keeping the queue and the answers
    for table in ("human_runs", "human_leases", "annotator_stats", "invitations", "annotators", "owner_tokens",
                  "blocked"):
        db.execute(f"DROP TABLE {table}")
    db.execute("DROP INDEX human_queue_open")
    db.execute("ALTER TABLE human_queue DROP COLUMN taken")
    db.execute("ALTER TABLE human_queue DROP COLUMN open")
    db.execute("DELETE FROM _migrations WHERE id = 7")
    db.conn.commit()
    db.close()
    with Store(path) as store:
        assert 7 in {r[0] for r in store.db.execute("SELECT id FROM _migrations")}
        assert (store.assignment("r"), [(r["agent"], r["ok"], r["checks"]) for r in store.annotator_stats("r")]) == want
    # the later migrations (8: batch jobs, 9: candidates, 10: a range column on migration 2's checks, which
    # rebuild_totals reads only when present) touch none of migration 7's tables
    assert [m[0] for m in migrations.MIGRATIONS if m[0] > 7] == [8, 9, 10]
