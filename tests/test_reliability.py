"""Each source's flip rate from attention checks and order swaps, and the learner fitting it."""

import numpy as np
import pytest
from click.testing import CliRunner

from fbloop.agents import LLMConfig, OracleAgent, OracleConfig, people as human
from fbloop.agents.reliability import CHECK_PRIOR, MAX_NOISE, MIN_SWAPS, Sources, flip_rate_from_checks, flip_rate_from_swaps
from fbloop.agents.server import ServerConfig, serve
from fbloop.cli import main
from fbloop.errors import ConfigError
from fbloop.learners import LearnerConfig
from fbloop.loop import RunConfig, run_loop
from fbloop.queries.catalogue import make_design
from fbloop.queries.designs import DesignConfig
from fbloop.records import Answers
from fbloop.store import Store
from fbloop.targets.load import load_target

from conftest import crash_on_record


def test_flip_rate_from_checks_is_the_posterior_mean():
    alpha, beta = CHECK_PRIOR
    assert flip_rate_from_checks(0, 0) is None  # no answered check: no estimate
    assert flip_rate_from_checks(20, 20) == pytest.approx(alpha / (20 + alpha + beta))
    assert flip_rate_from_checks(20, 14) == pytest.approx((6 + alpha) / (20 + alpha + beta))
    assert flip_rate_from_checks(10, 0) == MAX_NOISE  # worse than chance is capped
    with pytest.raises(ConfigError, match="correct=5, checks=4"):
        flip_rate_from_checks(4, 5)


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.2, 0.35])
def test_flip_rate_from_swaps_inverts_the_disagreement_of_two_independent_askings(eps):
    both = 100_000
    d = 2 * eps * (1 - eps)
    assert flip_rate_from_swaps(both, round(both * (1 - d))) == pytest.approx(eps, abs=1e-3)


def test_flip_rate_from_swaps_needs_pairs_and_caps():
    assert flip_rate_from_swaps(MIN_SWAPS - 1, 0) is None
    assert flip_rate_from_swaps(100, 40) == MAX_NOISE  # disagreeing more than half the time
    with pytest.raises(ConfigError, match="agree=3, both=2"):
        flip_rate_from_swaps(2, 3)


def test_sources_name_mixed_answers_row_by_row():
    src = Sources(["llm", "llm#swap"])
    assert src.id("llm#swap") == 1 and src.id("human:bob") == 2
    mixed = Answers("mixed", np.arange(3), np.ones(3), np.full(3, "ok"),
                    meta=[{"agent": "human:bob"}, {"agent": "human:eve"}, {"agent": "human:bob"}])
    assert src.of(mixed).tolist() == [2, 3, 2]
    assert src.named({3: 0.25, 9: 0.1}) == {"human:eve": 0.25}


def test_people_are_weighed_by_their_attention_checks(tmp_path):
    """Two people answer one queue: one right, one flipping 40 % of everything (checks included)."""
    spec = "synthetic:p=10,rank=3"
    target = load_target(spec)
    base = dict(target=spec, design=DesignConfig(name="triplet", mu=0.7), agent="human", budget=400,
                check_rate=0.1, learner_config=LearnerConfig(rank=6, seed=0))
    design = make_design(base["design"], target, 0)
    queries = design.queries(0, 400)
    truth = dict(zip(queries.seq.tolist(), OracleAgent(target.factor, design.anchor()).answer(queries).value))
    rng = np.random.default_rng(0)
    word = {1.0: "first", -1.0: "second", 0.0: "equal"}
    pcc = {}
    for aware in (None, False):
        with Store(tmp_path / f"{aware}.db") as store:
            cfg = RunConfig(**base, noise_aware=aware)
            run_loop(cfg, store, run_id="h")  # queues
            human.set_assignment(store, "h", overlap=2)  # both people answer every triplet
            checks = store.checks("h")
            for who, flip in (("ann", 0.0), ("careless", 0.4)):
                while (q := human.next_query(store, "h", who)) is not None:
                    want = checks[q.seq][1] if q.seq in checks else truth[q.seq]
                    if rng.random() < flip:
                        want = -want if want else 1.0
                    human.submit(store, "h", q.seq, who, word[want], 1, q.token)
            result = run_loop(cfg, store, run_id="h")
            assert result.answers == 800
            pcc[aware] = result.pcc
            if aware is None:
                eps = result.extra["source_noise"]
                acc = {r["agent"]: r for r in human.check_accuracy(store, "h")}
                for name in ("human:ann", "human:careless"):
                    assert eps[name] == pytest.approx(flip_rate_from_checks(acc[name]["checks"], acc[name]["correct"]))
                assert eps["human:ann"] < 0.05 and 0.25 < eps["human:careless"] <= MAX_NOISE
                assert store.snapshots("h")[-1]["extra"]["source_noise"] == eps
            else:
                assert "source_noise" not in result.extra
    assert pcc[None] > pcc[False] + 0.08, pcc  # measured: 0.995 against 0.849


def test_an_llm_is_weighed_by_its_order_swaps_over_http(tmp_path, monkeypatch):
    """The real openai client against a local server whose oracle flips 20 % of its answers."""
    monkeypatch.setenv("OPENAI_API_KEY", "local")
    spec = "synthetic:p=16,rank=4"
    target = load_target(spec)
    with serve(ServerConfig(target=spec, oracle=OracleConfig(noise="flip", flip=0.2)), target=target) as srv, \
            Store(tmp_path / "llm.db") as store:
        def config(aware):
            return RunConfig(target=spec, design=DesignConfig(name="triplet"), agent="llm", budget=1200, chunk=200,
                             llm=LLMConfig(base_url=srv.url, order_swap=True, batch_size=8, concurrency=4),
                             learner_config=LearnerConfig(rank=8, seed=0), noise_aware=aware, rfm_mse=False)

        aware = run_loop(config(None), store, run_id="aware")
        exact = run_loop(config(False), store, run_id="exact")
        (eps,) = set(aware.extra["source_noise"].values())  # both orders of the asking share one rate
        assert eps == pytest.approx(0.2, abs=0.04)
        assert aware.pcc > exact.pcc + 0.07, (aware.pcc, exact.pcc)  # measured: 0.928 against 0.813

        real = crash_on_record(monkeypatch, store, 3)  # killed in the third chunk, then resumed
        with pytest.raises(KeyboardInterrupt):
            run_loop(config(None), store, run_id="resumed")
        monkeypatch.setattr(store, "record", real)
        resumed = run_loop(config(None), store, run_id="resumed")
        assert resumed.extra["source_noise"] == aware.extra["source_noise"]  # the tally read back from the store


@pytest.mark.slow  # 19–29 s on 2 cores
def test_the_cli_prints_the_fitted_rates_and_exact_sources_turns_them_off(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "local")
    spec = "synthetic:p=12,rank=3"
    with serve(ServerConfig(target=spec, oracle=OracleConfig(noise="flip", flip=0.2))) as srv:
        args = ["run", "--target", spec, "--design", "triplet", "--agent", "llm", "--order-swap", "--base-url",
                srv.url, "--batch-size", "8", "--budget", "300", "--db", str(tmp_path / "cli.db")]
        aware = CliRunner().invoke(main, args + ["--run-id", "aware"])
        exact = CliRunner().invoke(main, args + ["--run-id", "exact", "--exact-sources"])
    assert aware.exit_code == 0 and exact.exit_code == 0, aware.output + exact.output
    assert "Noise-aware: answers fitted at the flip rates llm:fbloop-oracle 0." in aware.output
    assert "Noise-aware" not in exact.output


def test_agreement_maths_over_m_options():
    from fbloop.agents.reliability import accuracy_from_signal, flip_rate_from_accuracy, options_compared, pair_signal

    assert [options_compared(*x) for x in (("triplet",), ("odd",), ("closest", 4), ("rank", 8))] == [2, 3, 4, 8]
    for kind, k, match in (("pair", None, "'pair'"), ("closest", None, "k=None"), ("rank", 1, "k=1")):
        with pytest.raises(ConfigError, match=match):
            options_compared(kind, k)
    with pytest.raises(ConfigError, match="options=1"):
        pair_signal(0.9, 1)
    assert pair_signal(0.5, 2) == 0 and pair_signal(0.25, 4) == 0 and pair_signal(1.0, 4) == 1  # chance, sure
    for m in (2, 3, 4, 8):
        for a in (1 / m, 0.6, 0.95):  # an agent agreeing with an exact one agrees at its accuracy
            assert accuracy_from_signal(pair_signal(a, m), m) == pytest.approx(a)
    assert flip_rate_from_accuracy(0.9) == pytest.approx(0.1)
    assert flip_rate_from_accuracy(0.85, "rank", 4) == pytest.approx(0.2)  # 1 − ε + ε/4 = 0.85
    assert flip_rate_from_accuracy(0.85, "closest", 4) == pytest.approx(0.15)
    assert flip_rate_from_accuracy(0.2) == MAX_NOISE and flip_rate_from_accuracy(1.2) == 0.0
