"""Running one experiment, :func:`run_loop`.

:func:`run_loop` walks the design's query sequence chunk by chunk. Each chunk's
queries and answers commit in one transaction; the learner takes a few steps
after each chunk and a PCC snapshot is stored every ``snapshot_every`` answers.
Calling it again with the same ``run_id`` resumes: stored answers are replayed
into a fresh learner and only unanswered queries are asked — nothing is lost or
asked twice.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import numpy as np

from .. import human, metrics
from ..active import ActiveStrategy
from ..agents.llm import LLMAgent
from ..bisection import BisectionAgent
from ..designs import Design, make_design, n_params
from ..errors import ConfigError, NoUsableAnswersError, StoreError
from ..learner import GradientLearner
from ..pool import AgentPool
from ..querying import ActiveQueries, Prequential, random_positions, stored_chunk
from ..reliability import Sources, source_noise
from ..store import Store
from ..targets import Target, load_target
from .agents import NativeView, answer_names, make_agent
from .config import Progress, RunConfig, RunResult
from .learners import HeldOut, choose_learner, feed, make_learner

ACTIVE_STEPS = 100  # active runs: learner steps after each chunk at least (the strategy scores under Φ̂)


# ---------------------------------------------------------------- the loop


def default_budget(design: Design) -> int:
    if design.count is not None:
        return design.count
    return 4 * n_params(design.p) if design.kind == "pair" else 20 * n_params(design.p)


def auto_chunk(budget: int) -> int:
    """Queries per transaction when the config leaves it open: ~500 chunks a run, 64 to 16,384 each."""
    return int(min(max(budget // 500, 64), 16_384))


def new_run_id(config: RunConfig) -> str:
    return f"{config.design.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: stored {va!r}, given {vb!r}")
    return out


def run_loop(config: RunConfig, store: Store, run_id: str | None = None,
             progress: Callable[[Progress], None] | None = None,
             target: Target | None = None) -> RunResult:
    """Run (or resume) one experiment and return its result."""
    t0 = time.perf_counter()
    target = target or load_target(config.target)
    design = make_design(config.design, target, config.seed)
    anchor = design.anchor()
    budget = config.budget or default_budget(design)
    if design.total is not None and budget > design.total:
        raise ConfigError(f"Budget {budget} exceeds the {design.total} distinct queries of design "
                          f"{config.design.name!r} at p={target.p}, rank={target.rank}.")
    learner_name = choose_learner(config, design)
    learner = make_learner(learner_name, target.p, config.learner_config, anchor, design)
    if config.agent == "llm" and design.kind != "triplet" and config.bisection is None:
        raise ConfigError("The llm agent answers triplets; pair designs need the bisection route "
                          "(--bisection 1e-3) or --design triplet.")
    if config.agent in ("human", "pool") and design.kind != "triplet":
        raise ConfigError(f"The {config.agent} agent answers triplets; use --design triplet with --agent "
                          f"{config.agent}.")
    if config.holdout and design.kind != "triplet":
        raise ConfigError(f"A held-out share scores triplet answers; design {config.design.name!r} asks pairs.")
    if config.active is not None and config.design.name != "triplet":
        raise ConfigError(f"Active strategies choose triplets; design {config.design.name!r} is fixed in "
                          "advance. Use --design triplet with --active.")
    held = HeldOut(config.holdout, config.seed) if config.holdout else None
    agent = make_agent(config, target, design, store)
    if config.bisection is not None and design.kind == "pair":
        agent = BisectionAgent(agent, anchor, config.bisection)
    pool = agent if isinstance(agent, AgentPool) else None
    people = next((m for m in pool.agents.values() if isinstance(m, human.PeopleMember)), None) if pool else None
    names = answer_names(agent)
    sources = Sources(list(pool.agents) if pool is not None else names)  # the learner's source ids
    noise_aware = isinstance(learner, GradientLearner) and design.kind == "triplet" and (
        pool.config.noise_aware if pool is not None else config.noise_aware is not False)
    active = (ActiveQueries(ActiveStrategy(target.p, config.active, config.design), config.seed)
              if config.active is not None else None)
    preq = Prequential() if active is not None else None

    if run_id is None:
        run_id = new_run_id(config)
        while store.get_run(run_id) is not None:  # a new run never lands on another's id (same second, same suffix)
            run_id = new_run_id(config)
    cfg_json = json.loads(json.dumps(config.to_dict()))
    existing = store.get_run(run_id)
    if existing is None:
        store.create_run(run_id, kind=design.kind, p=target.p, budget=budget, config=cfg_json,
                         target=target.summary(), anchor=anchor)
    else:
        diff = _config_diff(existing["config"], cfg_json)
        if diff:
            raise StoreError(f"Run {run_id!r} exists with another config ({'; '.join(diff[:3])}); "
                             "use a new --run-id.")
        replays = [{"agent": who} for who in pool.agents] if pool is not None else [{}]
        if people is not None:
            replays.append({"prefix": human.PREFIX})  # every annotator's answers
        for which in replays:  # replay what was stored
            for queries, answers in store.iter_answered(run_id, **which):
                feed(learner, queries, answers, held, sources.of(answers))
                design.observe(queries, answers)
                if active is not None:
                    active.observe(queries)
        if pool is not None:
            rows = store.answer_values(run_id)
            if people is not None:  # annotators answer as the people member; it was charged per triplet queued
                rows = [(q, people.name if a.startswith(human.PREFIX) else a, st, v) for q, a, st, v in rows]
            pool.replay(rows)
        if config.learner_config.steps_per_chunk:
            learner.step(config.learner_config.steps_per_chunk)
    if people is not None:  # what the run queued for people before counts as asked (and charged)
        people.bind(run_id)
        pool.asked_[people.name] = len(people.queued)
        pool.spent_[people.name] = pool.members[people.name].cost * len(people.queued)
    # An LLM asking both orders: its own tally of this process's swapped pairs, on top of what was stored before.
    inner = agent.agent if isinstance(agent, NativeView) else agent
    swapper = inner if pool is None and isinstance(inner, LLMAgent) and inner.config.order_swap else None
    stored_swaps = store.agreement(run_id, *names) if swapper is not None else None

    def swaps() -> tuple[int, int] | None:  # (answered in both orders, agreeing)
        if swapper is None:
            return None
        u = swapper.usage
        return (stored_swaps["both"] + u.swap_pairs, stored_swaps["agree"] + u.swap_pairs - u.swap_disagreements)

    def refit_noise() -> dict[int, float]:  # each source's flip rate from what is stored, given to the learner
        fitted = source_noise(store, run_id, config.agent == "human" or people is not None, pool, sources,
                              swaps(), names)
        learner.set_source_noise(fitted)
        return fitted

    noise: dict[int, float] = refit_noise() if noise_aware else {}
    stored_until = store.next_position(run_id) if active is not None and existing is not None else 0

    chunk = config.chunk or auto_chunk(budget)
    every = config.snapshot_every or max(chunk, budget // 40)
    history: list[tuple[int, float | None]] = [(s["answers"], s["pcc"]) for s in store.snapshots(run_id)]
    n_ok = store.count_answers(run_id)
    last_snap = history[-1][0] if history else 0

    def current_factor() -> np.ndarray | None:
        return learner.factor() if getattr(learner, "n_triplets", 0) else None

    def live_extra() -> dict:
        extra: dict = {}
        if held is not None:
            extra["holdout_agreement"], extra["holdout_n"] = held.agreement(learner), held.n
        elif preq is not None:
            extra["holdout_agreement"], extra["holdout_n"] = preq.agreement(), preq.n
            extra["holdout_kind"] = "prequential"
        if pool is not None:
            summary = pool.summary()
            extra["cost"], extra["pool"] = summary["total_cost"], summary
        if noise:  # the flip rate each source's answers are fitted at
            extra["source_noise"] = sources.named(noise)
        if learner_name == "pivot":  # its rank and the hold-out pairs' PCC, the readout without Φ*
            extra["pivot"] = learner.summary()
        return extra

    def snapshot() -> float:  # a snapshot while answers arrive; the final one is stored after the fit
        pcc = metrics.pcc_factored(design.native_factor(learner.factor()), target.factor)
        extra = {"loss": learner.last_loss, "learner": learner_name, "final": False, **live_extra()}
        store.add_snapshot(run_id, n_ok, pcc, time.perf_counter() - t0, extra)
        history.append((n_ok, pcc))
        return pcc

    pcc: float | None = history[-1][1] if history else None
    store.set_status(run_id, "running")
    if config.agent == "human":  # people answer in the app: queue the triplets, learn from what is in so far
        rate = human.CHECK_RATE if config.check_rate is None else config.check_rate
        if active is None:
            human.queue(store, run_id, design.queries(0, budget), check_rate=rate, factor=target.factor,
                        seed=config.seed)
        elif n_ok == 0:  # the first chunk, random; later ones are chosen after the fit below
            top_up_queue(store, run_id, active, budget, chunk, None, rate, target.factor, config.seed)
        if n_ok == 0:  # nothing answered yet, nothing to learn
            store.set_status(run_id, "waiting")
            if active is not None:
                active.close()
            return RunResult(run_id, None, 0, budget, design.count, learner_name, time.perf_counter() - t0,
                             np.zeros((target.p, 1)), history)
    names = answer_names(agent)
    try:
        stop = 0
        while stop < (budget if config.agent != "human" else 0):
            start = stop
            # An adaptive design (the pivot design) may end a chunk early where its next queries wait on answers.
            stop = design.ready_until(start, min(start + chunk, budget))
            done = store.answered(run_id, start, stop, None if pool is not None else agent.name)
            if people is not None:  # queued for people counts as asked: their answers come later
                done = np.union1d(done, [s for s in range(start, stop) if s in people.queued]).astype(np.int64)
            # A resumed run asks again what got only invalid answers (an unparseable reply), one attempt later.
            retry = store.invalid_only(run_id, start, stop, names) if existing is not None else {}
            if len(done) == stop - start and not retry:
                continue  # answered before a restart; already replayed
            # Φ̂ as learnt so far, copied once a chunk for the strategy and the pool's routing
            factor = current_factor() if active is not None or pool is not None else None
            if active is None:
                queries = design.queries(start, stop)
            else:
                queries = stored_chunk(store, run_id, start, stop) if start < stored_until else None
                if queries is None:
                    queries = active.get(start, stop, factor)
                if stop < budget and stop >= stored_until:  # score the next chunk while this one is answered
                    active.prefetch(stop, min(stop + chunk, budget), factor)
            pending = queries.select(~np.isin(queries.seq, done) | np.isin(queries.seq, list(retry)))
            if pool is not None:
                pool.factor = factor  # the pool routes the least sure queries to its most reliable member
            # An agent may give several answer sets per query (the LLM agent's order swap); all are kept.
            sets = agent.answer_sets(pending) if hasattr(agent, "answer_sets") else [agent.answer(pending)]
            if retry:
                store.record_attempts(run_id, queries, sets, retry)
            else:
                store.record(run_id, queries, sets)
            for answers in sets:
                n_ok += int(answers.ok.sum())
                if preq is not None:  # score the random share before learning from it
                    preq.score(learner, pending, answers,
                               random_positions(config.seed, answers.seq, config.active.random_share))
                feed(learner, pending, answers, held, sources.of(answers))
                design.observe(pending, answers)
            if noise_aware:
                noise = refit_noise()
            loss = None
            if learner_name == "gradient":
                steps = learner.arrival_steps(stop - start)
                loss = learner.step(max(steps, ACTIVE_STEPS) if active is not None else steps)
            if n_ok - last_snap >= every and learner_name in ("gradient", "pivot"):
                pcc, last_snap = snapshot(), n_ok
            if progress:
                progress(Progress(min(stop, budget), budget, pcc, loss))
            if config.stop_at is not None and pcc is not None and pcc >= config.stop_at:
                break  # good enough: no more answers are paid for
    finally:
        if active is not None:
            active.close()

    no_usable_answers(store, run_id, n_ok)
    if isinstance(learner, GradientLearner):
        fit_pcc, reports = pcc, [0]

        def fit_progress(done: int, total: int, loss: float) -> None:
            nonlocal fit_pcc
            reports[0] += 1
            if reports[0] % 10 == 0:  # a PCC readout costs O(p·r²): every tenth report
                fit_pcc = metrics.pcc_factored(design.native_factor(learner.factor()), target.factor)
            if progress:
                progress(Progress(n_ok, budget, fit_pcc, loss, fit=(done, total)))

        def fit_stage(name: str) -> None:
            if progress:
                progress(Progress(n_ok, budget, fit_pcc, None, stage=name))

        learner.finish(progress=fit_progress, stage=fit_stage)
    else:
        if progress:
            progress(Progress(n_ok, budget, pcc, None, stage=f"{learner_name} solve"))
        learner.finish()
    factor = design.native_factor(learner.factor())
    pcc = metrics.pcc_factored(factor, target.factor)
    store.save_factor(run_id, factor)
    if config.rfm_mse and target.meta.get("kind") == "rfm" and progress:
        progress(Progress(n_ok, budget, pcc, None, stage="RFM test MSE"))
    extra = readouts(target, factor) if config.rfm_mse else {}
    asker = agent.agent if isinstance(agent, BisectionAgent) else agent  # who actually answered
    asker = asker.agent if isinstance(asker, NativeView) else asker
    if hasattr(asker, "run_summary"):  # requests, tokens, cost, position bias
        extra["llm"] = asker.run_summary(store, run_id)
    for member in (pool.agents.values() if pool is not None else ()):
        if hasattr(member, "run_summary"):  # a pool's LLM member
            extra["llm"] = member.run_summary(store, run_id)
    if isinstance(agent, BisectionAgent):  # every ternary answer behind the bisected pairs
        extra["ternary_answers"] = store.sum_meta(run_id, "triplets")
    extra.update(live_extra())
    if active is not None:
        extra["active"] = active.summary()
    if design.adaptive:
        extra["design"] = design.summary()
    store.add_snapshot(run_id, n_ok, pcc, time.perf_counter() - t0,  # one final snapshot, every readout in it
                       {"loss": learner.last_loss, "learner": learner_name, "final": True, **extra})
    history.append((n_ok, pcc))
    if config.agent == "human" and active is not None:  # the next chunk, chosen under what was just learnt
        rate = human.CHECK_RATE if config.check_rate is None else config.check_rate
        top_up_queue(store, run_id, active, budget, chunk, learner.factor(), rate, target.factor, config.seed)
    store.set_status(run_id, "waiting" if (config.agent == "human" or people is not None)
                     and human.waiting(store, run_id) else "done")
    if progress:
        progress(Progress(n_ok, budget, pcc, learner.last_loss, stage="done"))
    return RunResult(run_id, pcc, n_ok, budget, design.count, learner_name,
                     time.perf_counter() - t0, factor, history, extra)


def no_usable_answers(store: Store, run_id: str, n_ok: int) -> None:
    """Stop before the final fit when no answer is usable (an LLM whose every reply was invalid): one
    clear error instead of a learner failing on no data. The run stays resumable (status ``no-data``):
    run it again to ask the invalid ones again."""
    if n_ok > 0:
        return
    info = store.invalid_reasons(run_id)
    store.set_status(run_id, "no-data")
    reasons = "; ".join(f"{why!r} ×{k}" for why, k in info["reasons"]) or "none stored"
    raise NoUsableAnswersError(f"Run {run_id!r} has no usable answer: {info['answers']} asked, {info['invalid']} "
                               f"invalid; commonest reasons: {reasons}. Resume with --run-id {run_id} to ask "
                               "the invalid ones again.")


def top_up_queue(store: Store, run_id: str, active: ActiveQueries, budget: int, chunk: int,
                 factor: np.ndarray | None, check_rate: float, truth: np.ndarray | None, seed: int) -> int:
    """Active runs with people: queue the next chunk of chosen triplets when fewer than a chunk wait.

    People never wait for scoring: the queue always holds up to a chunk ahead, and
    the run (``fbloop run`` again, or ``fbloop run --watch``) chooses the next one
    under the ``Φ̂`` learnt from the answers in so far. Returns how many were queued.
    """
    info = store.queue_progress(run_id)
    unanswered = info["queued"] - info["answered"]
    start = store.next_position(run_id)
    if unanswered >= chunk or start >= budget:
        return 0
    stop = min(start + chunk, budget)
    queries = active.get(start, stop, factor)
    return human.queue(store, run_id, queries, check_rate=check_rate, factor=truth, seed=seed)["queued"]


def readouts(target: Target, factor: np.ndarray) -> dict:
    """Target-specific readouts beyond PCC: for the RFM target, the paper's test MSE."""
    if target.meta.get("kind") != "rfm":
        return {}
    from .. import rfm

    result = rfm.fit_rfm(rfm.RFMConfig(figure=target.meta["figure"], seed=target.meta["seed"]))
    base = rfm.baseline_mses(result)
    return {"mse": rfm.test_mse(result, factor @ factor.T), "mse_truth": base["truth"],
            "mse_identity": base["identity"]}
