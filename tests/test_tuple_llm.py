"""Tuple questions to an LLM: prompts, strict replies, and the real ``openai`` client over HTTP against
``fbloop serve-oracle``'s server answering from ``Φ*``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fbloop import render
from fbloop.agents import LLMConfig, OracleAgent
from fbloop.agents.server import ServerConfig, serve
from fbloop.agents.tuple_llm import TupleLLMAgent
from fbloop.agents.tuple_prompts import (batch_reply, batch_schema, parse, parse_batch, read_prompt,
                                         read_questions, reply, schema)
from fbloop.errors import ConfigError
from fbloop.learners import LearnerConfig
from fbloop.loop import RunConfig, run_loop
from fbloop.queries.catalogue import make_design
from fbloop.queries.designs import DesignConfig
from fbloop.agents.oracle import OracleConfig
from fbloop.agents.reliability import flip_rate_from_swaps
from fbloop.records import Queries, from_reversed, ranking_code
from fbloop.sparse import SparseBatch
from fbloop.store import Store

from conftest import ORACLE_SPEC as SPEC

KEY = "sk-test-never-stored"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def cfg(url, **kw) -> LLMConfig:
    kw.setdefault("structured", "json_schema")
    return LLMConfig(base_url=url, backoff_s=0.005, backoff_max_s=0.02, **kw)


def questions(target, kind, k=None, n=30, dist="gaussian") -> Queries:
    return make_design(DesignConfig(name=kind, k=k, dist=dist), target, 0).queries(0, n)


def on_grid(q: Queries) -> Queries:
    """The questions as the prompt shows them: every weight as rendered."""
    snap = lambda b: SparseBatch(b.indices, np.vectorize(render.shown)(b.values), b.p)  # noqa: E731
    cands = None if q.cands is None else tuple(snap(c) for c in q.cands)
    return Queries(q.kind, q.seq, snap(q.a), None if q.b is None else snap(q.b),
                   None if q.c is None else snap(q.c), cands)


# ---------------------------------------------------------------- strict replies


@pytest.mark.parametrize("kind,text,want", [
    ("closest", '{"closest": 3}', 3.0),
    ("closest", ' {"closest": "none"}\n', 0.0),
    ("rank", '{"ranking": [1, 2, 3, 4]}', 0.0),
    ("rank", '{"ranking": [4, 3, 2, 1]}', 23.0),
    ("odd", '{"odd": 2}', 2.0),
])
def test_replies_in_the_asked_shape_are_read(kind, text, want):
    assert parse(kind, text, 4 if kind != "odd" else 3) == (want, None)


@pytest.mark.parametrize("kind,text,why", [
    ("closest", '{"closest": 5}', "unknown answer 5; expect a number 1…4"),
    ("closest", '{"closest": 0}', "unknown answer 0"),
    ("closest", '{"closest": true}', "unknown answer True"),
    ("closest", '{"closest": "2"}', "unknown answer '2'"),
    ("closest", '{"closest": 2.0}', "unknown answer 2.0"),
    ("closest", '{"closest": 2, "why": "x"}', "expect exactly the key 'closest'"),
    ("closest", '{"closest": 2, "closest": 3}', "duplicate key"),
    ("closest", 'Candidate 2. {"closest": 2}', "not JSON"),
    ("rank", '{"ranking": [1, 2, 3]}', "is not the candidates 1…4, each once"),
    ("rank", '{"ranking": [1, 2, 2, 4]}', "each once"),
    ("rank", '{"ranking": [1, 2, 3, 4, 5]}', "each once"),
    ("rank", '{"ranking": [0, 1, 2, 3]}', "each once"),
    ("rank", '{"ranking": [1, 2, 3, true]}', "each once"),
    ("rank", '{"ranking": "1, 2, 3, 4"}', "each once"),
    ("odd", '{"odd": 4}', "expect a number 1…3"),
    ("odd", '{"odd": "none"}', "unknown answer 'none'"),
    ("odd", '["odd", 1]', "expect exactly the key 'odd', got list"),
])
def test_anything_else_is_invalid_with_its_reason(kind, text, why):
    value, reason = parse(kind, text, 4 if kind != "odd" else 3)
    assert value is None and why in reason


@pytest.mark.parametrize("kind,k", [("closest", 5), ("rank", 5), ("odd", 3)])
def test_a_perfect_reply_reads_back_to_its_value_and_fits_the_schema(kind, k):
    import jsonschema

    values = [0.0, 1.0, 3.0] if kind != "rank" else [0.0, 17.0, 119.0]
    for v in values:
        if kind == "odd" and v == 0:
            continue
        text = reply(kind, v, k)
        jsonschema.validate(json.loads(text), schema(kind, k))
        assert parse(kind, text, k) == (v, None)


# ---------------------------------------------------------------- prompts read back


@pytest.mark.parametrize("kind,k", [("closest", 4), ("rank", 6), ("odd", None)])
def test_the_server_reads_the_agents_prompt_back_to_the_shown_activations(target, kind, k):
    q = questions(target, kind, k, n=3, dist="sparse")
    agent = TupleLLMAgent(cfg("http://127.0.0.1:1/v1"), kind, k or 3, ("a \"closest\" feature",) * target.p)
    grid = on_grid(q)
    for row, text in enumerate(agent._texts(q)):
        prompt = agent._prompt([text])
        got = read_prompt(prompt)
        assert got is not None and got.kind == kind
        acts = [grid.a, grid.b, grid.c] if kind == "odd" else list(grid.cands)
        for opt, b in zip(got.options, acts):
            want = sorted((int(i), float(v)) for i, v in zip(b.indices[row], b.values[row]) if v != 0)
            assert sorted(opt) == want
        if kind != "odd":
            ref = sorted((int(i), float(v)) for i, v in zip(grid.a.indices[row], grid.a.values[row]) if v != 0)
            assert sorted(got.reference) == ref


def test_a_prompt_without_a_tuple_question_is_not_read():
    assert read_prompt("Reference:\n- feature 1 (weight 1.000): \"x\"\n\nCandidate 1:\n- (no active features)\n"
                       'Reply {"closest": N}') is None  # one candidate only
    assert read_prompt("Candidate 1:\nCandidate 2:\nReply with {\"closest\": 1} or {\"ranking\": [1]}") is None


def reversed_questions(q: Queries) -> Queries:
    """The questions with their candidates (odd one out: items) in reverse order."""
    if q.kind == "odd":
        return Queries("odd", q.seq, q.c, q.b, q.a)
    return Queries(q.kind, q.seq, q.a, cands=q.cands[::-1])


@pytest.mark.parametrize("kind,k", [("closest", 5), ("rank", 4), ("odd", 3), ("triplet", 2)])
def test_answers_to_reversed_questions_map_back_to_the_stored_order(target, kind, k):
    q = questions(target, kind, None if kind in ("odd", "triplet") else k, n=60)
    oracle = OracleAgent(target.factor, q.a)
    flipped = Queries("triplet", q.seq, q.a, q.c, q.b) if kind == "triplet" else reversed_questions(q)
    back = from_reversed(kind, oracle.answer(flipped).value, k)
    assert np.array_equal(back, oracle.answer(q).value)
    assert np.isnan(from_reversed(kind, np.array([np.nan]), k)).all()


@pytest.mark.parametrize("kind,k", [("closest", 4), ("rank", 4), ("odd", None)])
def test_the_order_swap_asks_reversed_questions_and_stores_them_in_the_stored_order(server, target, kind, k):
    """An exact oracle behind the server answers both orders alike once the swapped answers are mapped
    back; the swapped prompts show the candidates last first."""
    q = questions(target, kind, k, n=40)
    agent = TupleLLMAgent(cfg(server.url, order_swap=True, cache=False, concurrency=8), kind, k or 3)
    asked, swapped = agent.answer_sets(q)
    want = OracleAgent(target.factor, q.a).answer(on_grid(q)).value
    assert asked.agent == "llm:fbloop-oracle" and swapped.agent == "llm:fbloop-oracle#swap"
    assert asked.ok.all() and swapped.ok.all()
    assert np.array_equal(asked.value, want) and np.array_equal(swapped.value, want)
    assert agent.usage.swap_pairs == 40 and agent.usage.swap_disagreements == 0
    shown = agent._texts(q)[0]
    assert read_prompt(agent._prompt([shown.reversed])).options == read_prompt(agent._prompt([shown])).options[::-1]


@pytest.mark.parametrize("kind,k,options,keeps", [
    ("closest", 4, 4, False), pytest.param("odd", None, 3, False, marks=pytest.mark.slow),
    pytest.param("rank", 3, 6, True, marks=pytest.mark.slow)])  # ~13 s each; closest stays in the default run
def test_the_swap_flip_rate_recovers_the_servers_flip_rate(target, kind, k, options, keeps):
    """Behind a server that flips 20 % of its answers (closest, odd: to another option at random; rank:
    to a random ranking), the disagreement between the two orders gives back a flip rate near 0.2."""
    q = questions(target, kind, k, n=500)
    flips = OracleConfig(noise="flip", flip=0.2)
    with serve(ServerConfig(target=SPEC, oracle=flips, seed=3), target=target) as srv:
        agent = TupleLLMAgent(cfg(srv.url, order_swap=True, cache=False, concurrency=8), kind, k or 3)
        asked, swapped = agent.answer_sets(q)
    both = int((asked.ok & swapped.ok).sum())
    agree = both - agent.usage.swap_disagreements
    assert both == 500
    eps = agent._swap_flip_rate(both, agree)
    assert eps == pytest.approx(flip_rate_from_swaps(both, agree, options, keeps))
    assert 0.14 < eps < 0.26, (agree, eps)


def test_a_model_favouring_the_first_candidate_shows_its_position_bias_in_a_run(target, tmp_path):
    """A server that always ranks candidate 1 first: the two orders disagree on most questions, the run's
    summary says so, and the learner is told a high flip rate for both orders."""
    with serve(ServerConfig(target=SPEC, first_bias=1.0), target=target) as srv, Store(tmp_path / "b.db") as store:
        config = RunConfig(target=SPEC, design=DesignConfig(name="rank", k=4, dist="gaussian"), budget=64,
                           learner_config=LearnerConfig(rank=3, final_steps=300), rfm_mse=False, agent="llm",
                           llm=cfg(srv.url, order_swap=True, concurrency=8))
        result = run_loop(config, store, run_id="biased")
        both = store.agreement("biased", "llm:fbloop-oracle", "llm:fbloop-oracle#swap")
    llm = result.extra["llm"]
    assert both["both"] == 64 and llm["swap_pairs"] == 64
    assert llm["position_bias_rate"] > 0.8  # candidate 1 first, and the reversed question's first is candidate 4
    assert result.extra["source_noise"]["llm:fbloop-oracle#swap"] == pytest.approx(0.45)  # capped


def test_a_batch_reply_needs_the_asked_ids_each_once():
    good = '{"answers": [{"id": 2, "closest": "none"}, {"id": 1, "closest": 3}]}'
    assert parse_batch("closest", good, 4, [1, 2]) == {1: (3.0, None), 2: (0.0, None)}
    for bad in ('{"answers": [{"id": 1, "closest": 3}]}', '{"answers": [{"id": 0, "closest": 3}, {"id": 1, "closest": 1}]}',
                '{"answers": [{"id": 1, "closest": 3}, {"id": 1, "closest": 1}]}', '[{"id": 1, "closest": 3}]'):
        got = parse_batch("closest", bad, 4, [1, 2])
        assert all(v is None and why for v, why in got.values()), bad
    one_bad = '{"answers": [{"id": 1, "ranking": [2, 1, 3]}, {"id": 2, "ranking": [1, 1, 3]}]}'
    got = parse_batch("rank", one_bad, 3, [1, 2])
    assert got[1] == (float(ranking_code(np.array([[1, 0, 2]]))[0]), None) and got[2][0] is None
    extra = parse_batch("odd", '{"answers": [{"id": 1, "odd": 3, "why": "x"}]}', 3, [1])
    assert extra[1][0] is None and "expect keys id and odd" in extra[1][1]


@pytest.mark.parametrize("kind,k", [("closest", 4), ("rank", 3), ("odd", 3)])
def test_a_perfect_batch_reply_fits_its_schema(kind, k):
    import jsonschema

    text = batch_reply(kind, [1.0, 2.0], k, [1, 2])
    jsonschema.validate(json.loads(text), batch_schema(kind, k, 2))
    assert parse_batch(kind, text, k, [1, 2]) == {1: (1.0, None), 2: (2.0, None)}


# ---------------------------------------------------------------- over HTTP


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("kind,k", [("closest", 4), ("rank", 4), ("odd", None)])
def test_the_llm_agent_answers_as_the_oracle_over_http(server, target, tmp_path, kind, k, batch):
    q = questions(target, kind, k)
    with Store(tmp_path / "c.db") as store:
        agent = TupleLLMAgent(cfg(server.url, structured="auto", batch_size=batch), kind, k or 3, cache=store)
        agent.check()
        got = agent.answer(q)
    want = OracleAgent(target.factor, q.a).answer(on_grid(q)).value
    assert got.ok.all() and np.array_equal(got.value, want)
    assert agent.modes.current == "json_schema" and agent.probe_log[0] == {"mode": "json_schema", "outcome": "ok"}
    m = got.meta[0]
    assert m["template"] == (kind if batch == 1 else f"{kind}_batch") and m["batch_size"] == batch
    assert m["prompt_tokens"] > 0 and m["completion_tokens"] > 0 and json.loads(got.raw[0])


def test_the_server_reads_a_batch_prompt_back_in_order(target):
    q = questions(target, "rank", 5, n=3, dist="sparse")
    agent = TupleLLMAgent(cfg("http://127.0.0.1:1/v1", batch_size=3), "rank", 5)
    got = read_questions(agent._prompt(agent._texts(q)))
    assert [x.id for x in got] == [1, 2, 3] and {x.kind for x in got} == {"rank"}
    assert [len(x.options) for x in got] == [5, 5, 5]
    assert read_prompt(agent._prompt(agent._texts(q))) is None  # a batch is not one question


def test_malformed_replies_are_invalid_with_a_reason_and_never_cached(target, tmp_path):
    q = questions(target, "rank", 4, n=60)
    with serve(ServerConfig(target=SPEC, malformed=0.5, seed=4), target=target) as srv, \
            Store(tmp_path / "m.db") as store:
        agent = TupleLLMAgent(cfg(srv.url), "rank", 4, cache=store)
        got = agent.answer(q)
        cached = store.cache_count()
    bad = ~got.ok
    assert 15 < bad.sum() < 45 and np.isnan(got.value[bad]).all()
    assert all(got.meta[i]["error"] for i in np.flatnonzero(bad)) and cached == got.ok.sum()


def test_first_bias_ranks_candidate_one_first(target, tmp_path):
    q = questions(target, "rank", 4, n=40)
    with serve(ServerConfig(target=SPEC, first_bias=1.0), target=target) as srv:
        got = TupleLLMAgent(cfg(srv.url, cache=False), "rank", 4).answer(q)
    assert got.ok.all() and (got.value < 6).all()  # codes 0…5: the rankings that start with candidate 1
    assert ranking_code(np.array([[0, 3, 2, 1]]))[0] == 5


def test_a_closest_of_4_llm_run_learns_and_resumes_without_paying_twice(server, tmp_path):
    config = RunConfig(target=SPEC, design=DesignConfig(name="closest", k=4, dist="gaussian"), budget=120,
                       learner_config=LearnerConfig(rank=3, final_steps=1500), rfm_mse=False, agent="llm",
                       llm=cfg(server.url))
    with Store(tmp_path / "r.db") as store:
        first = run_loop(config, store, run_id="c")
        sent = server.stats["requests"]
        again = run_loop(config, store, run_id="c")
        use = store.request_usage("c", ["llm:fbloop-oracle"])
        early = store.request_usage("c", ["llm:fbloop-oracle"], before_seq=40)  # what the first 40 cost
    assert first.answers == again.answers == 120 and first.pcc > 0.95
    assert early["requests"] == 40 and early["answers"] == {"ok": 40}
    assert 0 < early["prompt_tokens"] < use["prompt_tokens"]
    assert server.stats["requests"] == sent  # every question was answered: nothing asked again
    assert use["requests"] == 120 and use["prompt_tokens"] > 0 and use["answers"] == {"ok": 120}
    assert first.extra["llm"]["template"] == "closest"
