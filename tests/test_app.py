"""The Streamlit app, driven headless by streamlit.testing: the annotation form and the dashboard."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from fbloop.agents import people as human
from fbloop.app import views
from fbloop.cli import app_command
from fbloop.learners import LearnerConfig
from fbloop.loop import RunConfig, run_loop
from fbloop.queries.designs import DesignConfig
from fbloop.records import Answers
from fbloop.store import Store

from conftest import sql_rows
from test_views import ACTIVE, POOL, add_run

APP = str(Path(__file__).resolve().parents[1] / "app.py")
FAST = LearnerConfig(final_steps=300, polish=False)
TRIPLETS = DesignConfig(name="triplet", mu=0.7)


def prepare_db(path: Path) -> Path:
    """An oracle triplet run with its factor, and a run queued for people (check rate 0.2)."""
    with Store(path) as store:
        run_loop(RunConfig(target="synthetic:p=8,rank=3", design=TRIPLETS, budget=200, snapshot_every=50,
                           learner_config=FAST), store, run_id="oracle-run")
        run_loop(RunConfig(target="synthetic:p=8,rank=3", design=TRIPLETS, agent="human", budget=12,
                           check_rate=0.2, learner_config=FAST), store, run_id="people")
    return path


@pytest.fixture(scope="module")
def template_db(tmp_path_factory):
    return prepare_db(tmp_path_factory.mktemp("app") / "template.db")


@pytest.fixture()
def db(template_db, tmp_path, monkeypatch):
    path = tmp_path / "app.db"
    shutil.copy(template_db, path)
    monkeypatch.setenv("FBLOOP_DB", str(path))
    monkeypatch.setenv("FBLOOP_ACCESS", "open")
    return path


def app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=60).run()


class Practised(dict):
    """Session state in which every run's practice round is done (the practice has its own test)."""

    def get(self, key, default=None):
        return [{}] * 10


def as_annotator(name: str = "alice") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["practice"] = Practised()
    at.run()
    at.text_input(key="annotator").set_value(name).run()
    assert not at.exception
    return at


def said(at: AppTest, text: str) -> bool:
    """Whether a caption, warning or error on the page contains ``text``."""
    return any(text in e.value for e in [*at.caption, *at.warning, *at.error, *at.success])


def click(at: AppTest, label: str, after_s: float = 2.0) -> AppTest:
    """Click an answer button as if ``after_s`` seconds had passed since the question was drawn.

    The clock is set from now, not from the draw: the rest of the page's run between the draw
    and the click takes a few hundred milliseconds on a loaded machine, which would otherwise
    count as reading time.
    """
    at.session_state["shown_at"] = time.time() - after_s
    (button,) = [b for b in at.button if b.label.endswith(label) or b.label.startswith(label)]
    return button.click().run()


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def dashboard(run_id: str) -> AppTest:
    at = app()
    at.radio(key="page").set_value("Dashboard").run()
    at.selectbox(key="run").set_value(run_id).run()
    assert not at.exception
    return at


def charts(at: AppTest) -> list[tuple[dict, list[dict]]]:
    """Every chart on the page: ``(spec, data rows)``; no rows for st.bar_chart's, whose data are named datasets."""
    return [(json.loads(c.proto.spec),
             pa.ipc.open_stream(c.proto.data.data).read_all().to_pylist() if c.proto.data.data else [])
            for c in at.get("vega_lite_chart")]


def chart_rows(at: AppTest, x: str, column: str) -> list[dict]:
    """The rows of the one chart with ``x`` on its x axis and ``column`` in its data."""
    (rows,) = [rows for spec, rows in charts(at) if rows and column in rows[0]
               and (spec.get("layer") or [spec])[0]["encoding"]["x"]["field"] == x]
    return rows


def human_answers(db: Path) -> list[tuple]:
    return sql_rows(db, "SELECT seq, agent, status, value, meta FROM answers WHERE run_id = 'people' ORDER BY id")


def test_app_without_a_database(tmp_path, monkeypatch):
    monkeypatch.setenv("FBLOOP_DB", str(tmp_path / "none.db"))
    at = app()
    assert not at.exception
    assert "No database" in at.info[0].value


def test_form_asks_for_a_name_first(db):
    at = app()
    assert not at.exception
    assert at.radio(key="page").value == "Annotate"
    assert "Enter your name" in at.info[0].value
    assert not at.button  # no question before a name


def test_form_without_queued_runs(tmp_path, monkeypatch):
    path = tmp_path / "plain.db"
    with Store(path) as store:
        run_loop(RunConfig(target="synthetic:p=6,rank=2", design=TRIPLETS, budget=20, learner_config=FAST),
                 store, run_id="only-oracle")
    monkeypatch.setenv("FBLOOP_DB", str(path))
    monkeypatch.setenv("FBLOOP_ACCESS", "open")
    at = app()
    assert "--agent human" in at.info[0].value


def test_answering_stores_one_answer_and_moves_on(db):
    at = as_annotator()
    q = at.session_state["question"]
    tables = [m.value for m in at.markdown if "<table" in m.value]
    assert len(tables) == 3 and all(f"#{f.index}" in tables[0] for f in q.reference)
    assert "no description" in tables[0] and "no description available" not in tables[0]
    assert said(at, "12 triplets still open") and not any(m.label == "Attention checks" for m in at.metric)
    at = click(at, "Closer to first")
    assert not at.exception
    (row,) = human_answers(db)
    assert row[:4] == (q.seq, "human:alice", "ok", 1.0)
    meta = json.loads(row[4])
    assert meta["token"] == q.token and meta["annotator"] == "alice" and meta["response_ms"] >= 0
    assert said(at, "1 answered by you") and (q.seq < 0 or said(at, "11 triplets still open"))
    assert at.session_state["question"].seq != q.seq


def test_a_pool_runs_people_answer_in_the_form(db):
    from fbloop.agents.pool import parse_member

    cfg = RunConfig(target="synthetic:p=8,rank=3", design=TRIPLETS, agent="pool", budget=200, chunk=50,
                    pool=(parse_member("people:human,cost=1,reference"), parse_member("cheap:oracle,cost=0.01")),
                    learner_config=FAST, rfm_mse=False)
    with Store(db) as store:
        run_loop(cfg, store, run_id="mixed-pool")
        queued = set(store.queued("mixed-pool").tolist())
    at = as_annotator("bob")
    at.selectbox(key="annotate_run").set_value("mixed-pool").run()
    q = at.session_state["question"]
    assert q.run_id == "mixed-pool" and q.seq in queued
    at = click(at, "Closer to second")
    assert not at.exception
    with Store(db) as store:
        assert store.answered("mixed-pool", q.seq, q.seq + 1, "human:bob").tolist() == [q.seq]


def test_skipping_and_the_other_answers(db):
    at = as_annotator()
    for label in ("Skip", "Closer to second", "Equally close"):
        at = click(at, label)
    assert not at.exception
    rows = human_answers(db)
    assert [(r[2], r[3]) for r in rows] == [("skipped", None), ("ok", -1.0), ("ok", 0.0)]
    assert len({r[0] for r in rows}) == 3
    assert said(at, "3 answered by you")


def test_a_double_submit_is_stored_once(db):
    at = as_annotator()
    q = at.session_state["question"]
    at = click(at, "Closer to first")
    # A second click on the same displayed question (double click / resubmitted form): its
    # token was sent already, so nothing reaches the store.
    at.session_state["question"] = q
    at.run()
    at = click(at, "Closer to second")
    # The same question from another tab: a fresh session and token, caught by the store's unique key.
    at.session_state["sent"] = set()
    at.session_state["question"] = type(q)(**{**q.__dict__, "token": "other-tab"})
    at.run()
    at = click(at, "Closer to second")
    assert not at.exception
    rows = [r for r in human_answers(db) if r[0] == q.seq]
    assert len(rows) == 1 and rows[0][3] == 1.0 and json.loads(rows[0][4])["token"] == q.token
    assert said(at, "not stored twice")
    with Store(db) as store:
        assert human.progress(store, "people", "alice")["answered"] == 1


def test_a_click_right_after_a_question_appears_is_not_an_answer(db):
    at = as_annotator()
    q = at.session_state["question"]
    at = click(at, "Closer to first", after_s=0.0)  # the tail of a double click, or a held key
    assert not human_answers(db) and at.session_state["question"] == q
    assert any("not taken as an answer" in c.value for c in at.caption)
    at = click(at, "Closer to first")
    assert len(human_answers(db)) == 1


def test_the_name_survives_a_page_switch(db):
    at = as_annotator("erin")
    at.radio(key="page").set_value("Dashboard").run()
    at.radio(key="page").set_value("Annotate").run()
    assert not at.exception
    assert at.text_input(key="annotator").value == "erin" and at.button


def test_attention_checks_are_scored(db):
    checks = sql_rows(db, "SELECT seq, expected FROM checks WHERE run_id = 'people'")
    expected = dict(checks)
    at = as_annotator("bob")
    answered = 0
    while at.session_state["question"] is not None:
        seq = at.session_state["question"].seq
        # Right on every check but one; "equal" on real triplets.
        last = seq == min(expected)
        want = {1.0: "Closer to first", -1.0: "Closer to second"}.get(expected.get(seq))
        if want and last:
            want = "Closer to second" if want == "Closer to first" else "Closer to first"
        at = click(at, want or "Equally close")
        answered += 1
    assert answered == 15 and len(expected) == 3
    assert not any("67%" in x.value for x in [*at.caption, *at.markdown])  # the score is the owner's, not theirs
    assert said(at, "answered every triplet there is for you")
    with Store(db) as store:
        (bob,) = views.annotators(store, "people")
        assert (bob["checks"], bob["correct"]) == (3, 2)
    with Store(db) as store:
        assert store.count_answers("people") == 12  # checks are not answers to learn from


def test_dashboard_renders_charts(db):
    at = dashboard("oracle-run")
    heads = [h.value for h in at.subheader]
    assert "PCC against answers" in heads and "Answers per agent" in heads
    assert "LLM agents" not in heads and "Annotators" not in heads  # an oracle run: neither block
    assert "Compare strategies" in heads and "Agent pool" not in heads and "Active querying" not in heads
    # PCC curve, answers per agent, agreement, and PCC of the runs on this target
    assert len(at.get("vega_lite_chart")) == 4
    assert len(at.get("image")) == 1  # Φ̂ beside Φ*
    assert float(metric(at, "PCC")) > 0
    assert not at.get("json")  # nothing echoed by Streamlit's magic


def test_dashboard_of_a_queue_with_check_accuracy(db):
    at = as_annotator("carol")
    q = at.session_state["question"]
    at = click(at, "Closer to first")
    at.radio(key="page").set_value("Dashboard").run()
    at.selectbox(key="run").set_value("people").run()
    assert not at.exception
    assert metric(at, "Queued for people") == f"{3 + (q.seq >= 0)}/15"  # filled triplets and the 3 checks
    assert "Annotators" in [h.value for h in at.subheader] and metric(at, "Annotators") == "1"


def test_llm_readouts(db):
    """Invalid replies, position bias and tokens come from the answers' status and meta."""
    with Store(db) as store:
        seq = np.arange(4)
        meta = [{"prompt_tokens": 100, "completion_tokens": 5, "batch_index": 0, "cached": False}] * 4
        store.add_answers("oracle-run", Answers("llm:m", seq, np.array([1.0, -1.0, 1.0, np.nan]),
                                                np.array(["ok", "ok", "ok", "invalid"]), meta=meta))
        store.add_answers("oracle-run", Answers("llm:m#swap", seq, np.array([1.0, 1.0, 1.0, 1.0]),
                                                np.full(4, "ok"), meta=meta))
        (stats,) = views.llm_stats(store, "oracle-run")
    assert stats["model"] == "m" and stats["answers"] == 8 and stats["invalid_rate"] == 1 / 8
    assert stats["position_bias"] == pytest.approx(1 / 3)  # 3 ok in both orders, 1 disagrees
    assert stats["prompt_tokens"] == 800 and stats["cost"] is None
    assert (stats["ok"], stats["tokens"], stats["tokens_per_answer"]) == (7, 840, 120.0)
    at = dashboard("oracle-run")
    assert metric(at, "Invalid replies") == "12%" and metric(at, "Position bias") == "33%"
    assert metric(at, "Tokens") == "840" and metric(at, "LLM tokens per answer") == "120.0"
    assert said(at, "Tokens: 800 prompt + 40 completion = 840; 120.0 per usable answer (7 ok).")


def test_the_fitted_flip_rate_of_an_llm_is_shown(db):
    with Store(db) as store:
        store.add_answers("oracle-run", Answers("llm:m", np.arange(2), np.ones(2), np.full(2, "ok")))
        assert views.source_noise(store, "oracle-run") == {}
        store.add_snapshot("oracle-run", 200, 0.9, 1.0, {"source_noise": {"llm:m": 0.2, "llm:m#swap": 0.2}})
        assert views.source_noise(store, "oracle-run") == {"llm:m": 0.2, "llm:m#swap": 0.2}
    at = dashboard("oracle-run")
    assert any("fitted at flip rate 0.200 (from its order swaps)" in m.value for m in at.markdown)


def test_agreement_scores_held_out_answers(db):
    with Store(db) as store:
        (row,) = views.agreement(store, "oracle-run")
        assert row["agent"] == "oracle" and row["n_fit"] == 200 and row["n_held_out"] == 0
        assert row["fit"] > 0.6 and row["held_out"] is None


def test_dashboard_draws_the_held_out_agreement_curve(db):
    with Store(db) as store:
        run_loop(RunConfig(target="synthetic:p=8,rank=3", design=TRIPLETS, budget=300, snapshot_every=60,
                           holdout=0.2, learner_config=FAST), store, run_id="held")
        curve = views.holdout_curve(store, "held")
        assert len(curve["answers"]) >= 4 and curve["agreement"][-1] > 0.8
        assert views.holdout_curve(store, "oracle-run")["answers"] == []
    at = dashboard("held")
    assert "PCC and held-out agreement" in [h.value for h in at.subheader]
    assert any("held-out triplet answers" in c.value for c in at.caption)
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert spec["layer"][0]["encoding"]["color"]["field"] == "readout"  # one line per readout


def test_dashboard_draws_the_pivot_designs_held_out_pairs(db):
    with Store(db) as store:
        run_loop(RunConfig(target="synthetic:p=60,rank=6", design=DesignConfig(name="pivot", block=8),
                           learner="auto", snapshot_every=100, rfm_mse=False), store, run_id="pivot-run")
        pairs = views.pair_holdout_curve(store, "pivot-run")
        live = [s for s in store.snapshots("pivot-run") if not s["extra"]["final"]]
        assert len(live) >= 3 and all("pivot" in s["extra"] for s in live)  # every live snapshot, not just the last
        assert len(pairs["answers"]) >= 3 and pairs["pcc"][-1] > 1 - 1e-9 and pairs["pcc"][0] < pairs["pcc"][-1]
        assert views.pair_holdout_curve(store, "held")["answers"] == []
    at = dashboard("pivot-run")
    assert "PCC and held-out pairs" in [h.value for h in at.subheader]
    assert any("random pairs (never learned from)" in c.value for c in at.caption)
    assert {row["readout"] for row in chart_rows(at, "answers", "readout")} == {"PCC", "held-out pairs' PCC"}


def test_dashboard_of_a_pool_run(db):
    with Store(db) as store:
        add_run(store, "pool", strategy="uncertainty", agent="pool", cost_per_answer=0.3,
                final={"pool": POOL, "active": ACTIVE}, answers={"people": 40, "llm": 150})
    at = dashboard("pool")
    assert metric(at, "Answers") == "190"  # each agent's answers are stored under its own name
    heads = [h.value for h in at.subheader]
    assert heads.index("Active querying") < heads.index("Agent pool") < heads.index("Compare strategies")
    assert metric(at, "Strategy") == "uncertainty" and metric(at, "Scoring") == "2.40 s"
    assert metric(at, "Waited for queries") == "600 ms" and metric(at, "Longest wait") == "500 ms"
    assert any("75% of the scoring ran while the agent answered" in c.value for c in at.caption)
    assert metric(at, "Total cost") == "41.50" and metric(at, "Shared queries") == "10"
    assert metric(at, "Hard queries") == "30" and metric(at, "Skipped") == "0"
    accuracy = chart_rows(at, "share", "source")
    assert [(r["agent"], r["label"]) for r in accuracy] == [("llm", "unknown"), ("people", "95% (prior)")]
    assert chart_rows(at, "share", "pair")[0]["label"] == "80% of 10"
    assert [r["label"] for r in chart_rows(at, "spent", "label")] == ["1.50", "40.00 (10.00 left)"]
    assert [r["label"] for r in chart_rows(at, "asked", "label")] == ["150 at 0.01 each", "40 at 1 each"]
    routing = chart_rows(at, "queries", "route")
    assert [(r["route"], r["queries"]) for r in routing] == [("shared", 10), ("hard", 30), ("rest", 120),
                                                            ("skipped", 0)]
    # Compared with the other runs on its target; only the pool run has a cost axis.
    by_answers = chart_rows(at, "answers", "strategy")
    assert {(r["run"], r["strategy"]) for r in by_answers} >= {("pool", "uncertainty"),
                                                              ("oracle-run", "fixed: triplet")}
    assert [(r["cost"], r["value"]) for r in chart_rows(at, "cost", "strategy")] == [(15.0, 0.4), (30.0, 0.7),
                                                                                     (45.0, 0.9)]


def test_a_pool_run_before_its_first_summary(db):
    with Store(db) as store:
        add_run(store, "young-pool", strategy="ensemble", agent="pool", cost_per_answer=1.0)
    at = dashboard("young-pool")
    assert "Agent pool" in [h.value for h in at.subheader]
    assert any("summary appears" in c.value for c in at.caption)
    assert any("final snapshot" in c.value for c in at.caption)  # active, not finished


def test_dashboard_compares_strategies(db):
    with Store(db) as store:
        add_run(store, "random", strategy="random")
        add_run(store, "ensemble", strategy="ensemble", curve=((50, 0.6), (100, 0.95)))
        add_run(store, "elsewhere", strategy="uncertainty", target="synthetic:p=8,rank=2")
    at = dashboard("ensemble")
    picker = at.multiselect(key="compare-ensemble")
    assert set(picker.value) == {"oracle-run", "people", "random", "ensemble"}  # every run on this target
    strategies = {r["strategy"] for r in chart_rows(at, "answers", "strategy")}
    assert strategies == {"fixed: triplet", "random", "ensemble"}
    assert any("No run here records its cost" in c.value for c in at.caption)
    assert "Agent pool" not in [h.value for h in at.subheader]

    picker.set_value(["ensemble", "random", "elsewhere"]).run()
    assert not at.exception
    rows = chart_rows(at, "answers", "strategy")
    assert [(r["run"], r["answers"]) for r in rows if r["run"] == "ensemble"] == [("ensemble", 50), ("ensemble", 100)]
    (spec,) = [spec for spec, rows in charts(at) if rows and "strategy" in rows[0]]
    color = spec["layer"][0]["encoding"]["color"]
    assert color["field"] == "strategy" and color["scale"]["domain"] == ["ensemble", "random", "uncertainty"]
    assert spec["layer"][0]["encoding"]["detail"]["field"] == "run"  # one line per run


def test_compare_by_held_out_agreement_without_phi_star(db):
    with Store(db) as store:
        add_run(store, "held-random", strategy="random", holdout=True, target="phi:missing.npy")
        add_run(store, "held-ensemble", strategy="ensemble", holdout=True, target="phi:missing.npy",
                curve=((40, 0.85),))
    at = dashboard("held-ensemble")
    assert set(at.multiselect(key="compare-held-ensemble").value) == {"held-random", "held-ensemble"}
    assert any("held-out agreement against answers" in m.value for m in at.markdown)
    assert any(r"No $\Phi^*$ for these runs" in c.value for c in at.caption)
    rows = chart_rows(at, "answers", "strategy")
    assert {(r["run"], r["value"]) for r in rows} >= {("held-ensemble", 0.85), ("held-random", 0.9)}


def test_app_command_binds_to_localhost(tmp_path):
    argv, env = app_command(str(tmp_path / "x.db"), 8600)
    assert Path(argv[argv.index("run") + 1]) == Path(APP)
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1"
    assert argv[argv.index("--server.port") + 1] == "8600"
    assert env["FBLOOP_DB"] == str((tmp_path / "x.db").resolve())


# ---------------------------------------------------------------- invitations, practice, undo


def invited(db, monkeypatch, token: str | None, practised: bool = True) -> AppTest:
    monkeypatch.setenv("FBLOOP_ACCESS", "invite")
    at = AppTest.from_file(APP, default_timeout=60)
    if practised:
        at.session_state["practice"] = Practised()
    if token is not None:
        at.query_params["token"] = token
    return at.run()


@pytest.mark.parametrize("token", [None, "", "a-forged-link", "x" * 500])
def test_without_a_valid_link_the_app_shows_nothing(db, monkeypatch, token):
    with Store(db) as store:
        human.invite(store, "alice", ["people"])
        human.owner_token(store)
    at = invited(db, monkeypatch, token)
    assert not at.exception
    assert said(at, "needs a valid invitation link")
    assert not at.button and not at.selectbox and not at.metric and not at.text_input


def test_an_invitation_opens_only_its_experiments_and_only_the_form(db, monkeypatch):
    with Store(db) as store:
        human.queue(store, "oracle-run", store.load_queries("oracle-run", np.arange(5)), check_rate=0.0)
        token = human.invite(store, "Alice", ["people"])
        assert store.annotator_by_token(token) is None  # only the hash is stored
    at = invited(db, monkeypatch, token)
    assert not at.exception
    assert at.selectbox(key="annotate_run").options == ["people (15 triplets)"]  # not oracle-run's queue
    assert not at.text_input and "page" not in [r.key for r in at.radio]  # no name to type, no dashboard
    at = click(at, "Closer to first")
    assert human_answers(db)[0][1] == "human:alice"
    at.run()  # a reload keeps them signed in: the token stays in the address
    assert said(at, "1 answered by you")


def test_the_owner_link_opens_the_dashboard(db, monkeypatch):
    with Store(db) as store:
        token = human.owner_token(store)
    at = invited(db, monkeypatch, token)
    assert not at.exception
    assert at.selectbox(key="run") and not at.text_input
    assert "Compare strategies" in [h.value for h in at.subheader]


def test_practice_comes_first_with_feedback(db, monkeypatch):
    with Store(db) as store:
        token = human.invite(store, "dan", ["people"])
    at = invited(db, monkeypatch, token, practised=False)
    assert [h.value for h in at.header] == ["Practice first"] and not human_answers(db)
    for i in range(3):
        at = click(at, "Closer to first")
        assert said(at, "Right:" if i % 2 == 0 else "Not quite")
    assert at.session_state["question"] is not None and not human_answers(db)  # practice is never stored


def test_undo_takes_back_the_last_answer(db):
    at = as_annotator()
    q = at.session_state["question"]
    at = click(at, "Closer to first")
    assert len(human_answers(db)) == 1
    at = at.button(key="undo").click().run()
    assert not human_answers(db) and said(at, "taken back")
    assert at.session_state["question"].seq == q.seq


@pytest.mark.parametrize("name", ["<script>alert(1)</script>", "[me](javascript:alert(1))"])
def test_a_hostile_name_is_shown_as_text(db, monkeypatch, name):
    with Store(db) as store:
        token = human.invite(store, name, ["people"])
    at = invited(db, monkeypatch, token)
    assert not at.exception
    assert any(t.value == f"Signed in as {human.normalise_name(name)}" for t in at.text)
    assert not any("alert" in m.value for m in at.markdown)


def pcc_rows(at: AppTest) -> list[dict]:
    """The PCC line of the dashboard's readout chart."""
    return [r for spec, rows in charts(at) for r in rows if r.get("readout") == "PCC" and "answers" in r]


def test_the_dashboard_follows_a_watched_run(tmp_path, monkeypatch):
    """People answer while `fbloop run --watch` learns: the dashboard's PCC curve and Φ̂ heatmap grow
    with the answers, with no second command."""
    from simulated_people import Annotators

    db = tmp_path / "watched.db"
    monkeypatch.setenv("FBLOOP_DB", str(db))
    monkeypatch.setenv("FBLOOP_ACCESS", "open")
    cmd = [sys.executable, "-m", "fbloop", "run", "--target", "synthetic:p=8,rank=3", "--seed", "1", "--design",
           "triplet", "--agent", "human", "--budget", "80", "--run-id", "R", "--db", str(db), "--watch",
           "--poll", "0.1", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    people = Annotators(db, pause=0.1)

    def count(sql: str) -> int:
        return sql_rows(db, sql)[0][0] if db.exists() else 0

    def wait_for(what, until: float = 120) -> None:
        deadline = time.monotonic() + until
        while not what():
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.05)

    try:
        wait_for(lambda: count("SELECT COUNT(*) FROM sqlite_master WHERE name = 'human_queue'")
                 and count("SELECT COUNT(*) FROM human_queue WHERE run_id = 'R'"))
        people.start()
        wait_for(lambda: count("SELECT COUNT(*) FROM snapshots WHERE run_id = 'R'") >= 2)
        first = pcc_rows(dashboard("R"))
        with Store(db) as store:
            assert views.phi_pair(store, "R") is not None  # the heatmap draws from the latest snapshot's Φ̂
        seen = max(r["answers"] for r in first)
        wait_for(lambda: count("SELECT MAX(answers) FROM snapshots WHERE run_id = 'R'") >= seen + 10)
        later = pcc_rows(dashboard("R"))
        assert len(later) > len(first) and max(r["answers"] for r in later) >= seen + 10
    finally:
        people.stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert people.error is None


# ---------------------------------------------------------------- tuple questions: closest of 4, rank 4, odd one out

TUPLES = {"closest4": DesignConfig(name="closest", k=4, mu=0.7), "rank4": DesignConfig(name="rank", k=4, mu=0.7),
          "odd3": DesignConfig(name="odd", mu=0.7)}


@pytest.fixture(scope="module")
def tuple_template(tmp_path_factory):
    """People runs of closest-of-4, rank-4 and odd-one-out questions, six each, no attention checks."""
    path = tmp_path_factory.mktemp("tuples") / "template.db"
    with Store(path) as store:
        for run_id, design in TUPLES.items():
            run_loop(RunConfig(target="synthetic:p=8,rank=3", design=design, agent="human", budget=6, check_rate=0.0,
                               learner_config=FAST), store, run_id=run_id)
    return path


@pytest.fixture()
def tuple_db(tuple_template, tmp_path, monkeypatch):
    path = tmp_path / "tuples.db"
    shutil.copy(tuple_template, path)
    monkeypatch.setenv("FBLOOP_DB", str(path))
    monkeypatch.setenv("FBLOOP_ACCESS", "open")
    return path


def on_run(run_id: str, name: str = "alice") -> AppTest:
    """The form on ``run_id`` for ``name``, with no practice round set aside (tuple runs have none)."""
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.text_input(key="annotator").set_value(name).run()
    at.selectbox(key="annotate_run").set_value(run_id).run()
    assert not at.exception
    return at


def answers_of(db: Path, run_id: str) -> list[tuple]:
    return sql_rows(db, "SELECT seq, agent, status, value, meta FROM answers WHERE run_id = ? ORDER BY id", (run_id,))


def test_closest_of_4_in_the_form(tuple_db):
    at = on_run("closest4")
    assert "closest4 (6 questions)" in at.selectbox(key="annotate_run").options
    assert "Practice first" not in [h.value for h in at.header]  # the practice round is the triplets'
    q = at.session_state["question"]
    assert (q.kind, q.k) == ("closest", 4)
    tables = [m.value for m in at.markdown if "<table" in m.value]
    assert len(tables) == 5 and "Reference" in tables[0] and all(f"Candidate {j}" in tables[j] for j in range(1, 5))
    assert all(f"#{f.index}" in tables[3] for f in q.options[2])
    assert [b.label for b in at.button] == ["Candidate 1", "Candidate 2", "Candidate 3", "Candidate 4",
                                            "No clear winner", "Skip"]
    assert any("closest to the reference" in m.value for m in at.markdown)
    assert any("How to answer" in m.value and "No clear" in m.value for m in at.markdown)  # the closest guide
    at = click(at, "Candidate 3")
    assert not at.exception
    (row,) = answers_of(tuple_db, "closest4")
    assert row[:4] == (q.seq, "human:alice", "ok", 3.0) and json.loads(row[4])["response_ms"] >= 1000
    assert said(at, "Stored: candidate 3. 1 answered by you · 5 questions still open")
    q2 = at.session_state["question"]
    at = click(at, "No clear winner")
    assert answers_of(tuple_db, "closest4")[1][:4] == (q2.seq, "human:alice", "ok", 0.0)
    # A second click on the question already answered: stored once, the first answer stands.
    at.session_state["question"] = q2
    at.run()
    at = click(at, "Candidate 1")
    assert said(at, "You had already answered that question") and len(answers_of(tuple_db, "closest4")) == 2
    # Undo brings the last one back.
    at = at.button(key="undo").click().run()
    assert len(answers_of(tuple_db, "closest4")) == 1 and at.session_state["question"].seq == q2.seq


def test_rank_4_in_the_form_refuses_an_incomplete_ranking(tuple_db):
    from fbloop.records import ranking_code

    at = on_run("rank4")
    q = at.session_state["question"]
    assert (q.kind, q.k) == ("rank", 4)
    assert len([m for m in at.markdown if "<table" in m.value]) == 5
    at.multiselect(key=f"rank-{q.token}").set_value([2, 1]).run()
    at = click(at, "Submit ranking")
    assert not answers_of(tuple_db, "rank4") and at.session_state["question"].seq == q.seq
    assert said(at, "Place all 4 candidates, closest first: 2 placed, candidates 3, 4 still to place")
    at.multiselect(key=f"rank-{q.token}").set_value([2, 1, 4, 3]).run()
    assert not said(at, "Place all")  # the refusal was of the earlier ranking
    at = click(at, "Submit ranking")
    assert not at.exception
    (row,) = answers_of(tuple_db, "rank4")
    assert row[:4] == (q.seq, "human:alice", "ok", float(ranking_code(np.array([[1, 0, 3, 2]]))[0]))
    assert said(at, "Stored: ranking 2 › 1 › 4 › 3")
    q2 = at.session_state["question"]
    assert q2.seq != q.seq and at.multiselect(key=f"rank-{q2.token}").value == []  # a fresh list
    at = click(at, "Skip")
    assert answers_of(tuple_db, "rank4")[1][:3] == (q2.seq, "human:alice", "skipped")


def test_odd_one_out_in_the_form(tuple_db):
    at = on_run("odd3")
    q = at.session_state["question"]
    assert q.kind == "odd" and q.reference is None
    tables = [m.value for m in at.markdown if "<table" in m.value]
    assert len(tables) == 3 and all(f"Item {j}" in tables[j - 1] for j in range(1, 4))
    assert [b.label for b in at.button] == ["Item 1", "Item 2", "Item 3", "Skip"]
    at = click(at, "Item 3")
    assert answers_of(tuple_db, "odd3")[0][:4] == (q.seq, "human:alice", "ok", 3.0) and said(at, "Stored: item 3")


def test_dashboard_shows_what_the_answers_cost(tuple_db):
    at = on_run("closest4", "bob")
    at = click(at, "Candidate 2", after_s=2.0)
    at = click(at, "Skip", after_s=4.0)
    at = dashboard("closest4")
    assert "What the answers cost" in [h.value for h in at.subheader]
    # two questions read (one skipped), a reference and four candidates each
    assert metric(at, "Activations shown") == "10" and metric(at, "Shown per question") == "5"
    assert metric(at, "Shown per usable answer") == "10.00" and metric(at, "LLM tokens per answer") == "—"
    assert metric(at, "Per question") == "1"  # people asked per question (the run's overlap)
    table = at.dataframe[0].value
    (bob,) = table.to_dict("records")
    assert bob["annotator"] == "bob" and bob["activations shown"] == 10
    assert 2.0 <= bob["median time (s)"] <= 5.0 and 0.1 <= bob["total time (min)"] <= 0.2  # ~2 s and ~4 s
