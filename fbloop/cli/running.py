"""``fbloop run`` and ``fbloop demo``: one feedback loop (or the demo's three), its progress bar, its printout."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import threading

import click

from .common import DESIGN_CHOICES, _fail_cleanly, _open_store, db_option, descriptions_options, json_option, main

# ---------------------------------------------------------------- run


def run_options(fn):
    options = [
        click.option("--target", default="rfm", show_default=True,
                     help="Target spec: rfm | rfm:figure=2 | synthetic:p=40,rank=5 | chessgpt | pythia | "
                          "phi:FILE | dict:FILE | saelens:DIR | dictlearn:DIR | sparsify:DIR | gemmascope:FILE."),
        *descriptions_options,
        click.option("--design", default="eigen", show_default=True,
                     type=click.Choice(DESIGN_CHOICES),
                     help="pivot: adaptive supports, every coordinate against pivots chosen from the answers. "
                          "closest / rank: which of --k candidates is nearest the reference, or their order; "
                          "odd: the odd one out of three."),
        click.option("--k", "k", default=None, type=int,
                     help="Closest / rank designs: candidates per question, 2 to 16 [default: 4]."),
        click.option("--block", default=None, type=int,
                     help="Pivot design: the block's first size; it grows by a quarter while full rank "
                          "[default: 32]."),
        click.option("--rank-tol", default=None, type=float,
                     help="Pivot design: the residual share its rank test reads as zero [default: 1e-9]."),
        click.option("--mu", default=0.9, show_default=True, type=float, help="Sparse/triplet/tuple: P(coordinate = 0)."),
        click.option("--s", "max_nnz", default=3, show_default=True, type=int, help="Sparse/triplet/tuple: max nonzeros."),
        click.option("--dist", default="sparse", show_default=True, type=click.Choice(["sparse", "gaussian"]),
                     help="Triplet and tuple activations."),
        click.option("--agent", default="oracle", show_default=True,
                     type=click.Choice(["oracle", "human", "llm", "pool"]),
                     help="human: queue the questions (triplets, closest, rank, odd) for `fbloop app`; run again "
                          "(or with --watch) to learn from the answers. "
                          "pool: several agents (--member), routed by the learner's uncertainty."),
        click.option("--active", default=None, type=click.Choice(["random", "uncertainty", "ensemble"]),
                     help="Triplet and tuple designs (closest, rank, odd): choose each chunk's questions from "
                          "Φ̂ (uncertainty sampling, or BALD over an ensemble), 10% of them uniformly random."),
        click.option("--member", "members", multiple=True, metavar="NAME:AGENT[,key=value...]",
                     help="Agent pool member (repeat): e.g. people:oracle,cost=1,reference  "
                          "cheap:oracle,noise=flip,flip=0.2,cost=0.01  gpt:llm,cost=0.01."),
        click.option("--hard-share", default=0.2, show_default=True, type=float,
                     help="Agent pool: share of each chunk (the least sure) sent to the most reliable member."),
        click.option("--bisection", default=None, type=float, metavar="EPS",
                     help="Answer a pair design with ternary comparisons, bisecting each scale to relative "
                          "precision EPS (e.g. 1e-3)."),
        click.option("--check-rate", default=None, type=float,
                     help="Human agent: share of attention checks in the queue [default: 0.1]."),
        click.option("--holdout", default=None, type=float, metavar="SHARE",
                     help="Triplet and tuple runs: share of the queries asked and stored but never learned from; each "
                          "snapshot scores Φ̂ on them (the readout without a Φ*), e.g. 0.1."),
        click.option("--base-url", default="http://127.0.0.1:8011/v1", show_default=True,
                     help="LLM agent: an OpenAI-compatible endpoint (`fbloop serve-oracle` serves this one)."),
        click.option("--model", default="fbloop-oracle", show_default=True, help="LLM agent: model name."),
        click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True,
                     help="LLM agent: name of the environment variable holding the API key (never stored)."),
        click.option("--batch-size", default=1, show_default=True, type=click.IntRange(1),
                     help="LLM agent: triplets per request."),
        click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1),
                     help="LLM agent: requests in flight at once."),
        click.option("--order-swap", is_flag=True,
                     help="LLM agent: also ask every question with its candidates in reverse order (a triplet's "
                          "two swapped): the position bias, and a flip rate for the learner."),
        click.option("--structured", default="auto", show_default=True,
                     type=click.Choice(["auto", "json_schema", "json_object", "vllm", "vllm-guided", "ollama",
                                        "prompt"]),
                     help="LLM agent: how the reply's JSON shape is asked for. auto: probe the server first. "
                          "json_schema: OpenAI (also vLLM, Ollama's /v1); json_object: llama.cpp; vllm / "
                          "vllm-guided: vLLM's structured_outputs / guided_json; ollama: Ollama's format; "
                          "prompt: the prompt alone."),
        click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(0, min_open=True),
                     help="LLM agent: seconds per request."),
        click.option("--max-tokens", default=None, type=click.IntRange(1),
                     help="LLM agent: completion token cap per request [default: the server's]."),
        click.option("--max-attempts", default=4, show_default=True, type=click.IntRange(1),
                     help="LLM agent: tries per request (first + retries) before its answers are invalid."),
        click.option("--llm-mode", default="sync", show_default=True, type=click.Choice(["sync", "batch", "offline"]),
                     help="LLM agent: sync (one request at a time), batch (the provider's Batch API: half the "
                          "price, answers within 24 h) or offline (fbloop batch export / ingest, for vllm run-batch)."),
        click.option("--batch-discount", default=0.5, show_default=True, type=click.FloatRange(0, 1, max_open=True),
                     help="--llm-mode batch/offline: the batch price's discount on --cost-*-1k."),
        click.option("--batch-poll", default=5.0, show_default=True, type=click.FloatRange(0, min_open=True),
                     help="--llm-mode batch: seconds before the first look at open batches (then backing off "
                          "×1.5 a quiet poll, up to 300 s)."),
        click.option("--cost-prompt-1k", default=0.0, show_default=True, type=float,
                     help="LLM agent: price per 1000 prompt tokens, for the run's cost."),
        click.option("--cost-completion-1k", default=0.0, show_default=True, type=float,
                     help="LLM agent: price per 1000 completion tokens."),
        click.option("--noise", default="none", show_default=True, type=click.Choice(["none", "logistic", "flip"]),
                     help="The simulated oracle's noise: none (exact), logistic (close calls go either way, "
                          "see --noise-temperature) or flip (each triplet answer flipped w.p. --flip)."),
        click.option("--noise-temperature", "--temperature", "temperature", default=0.05, show_default=True,
                     type=float,
                     help="Simulated oracle, --noise logistic: answers +1 w.p. σ(margin / T) on the scale-free "
                          "margin, and pair scales are perturbed by exp(T·ε). Not an LLM's sampling temperature."),
        click.option("--flip", default=0.1, show_default=True, type=float,
                     help="Simulated oracle, --noise flip: the probability that a triplet answer is flipped."),
        click.option("--tie-band", default=0.0, show_default=True, type=float,
                     help="Simulated oracle: answer 0 (a tie) when the margin is within this share of the "
                          "distances."),
        click.option("--budget", default=None, type=int,
                     help="Answers to collect [default: the design's bound; for designs without one (sparse, "
                          "coverage, triplet) 4·p(p+1)/2 pairs or 20·p(p+1)/2 triplets]."),
        click.option("--stop-at", default=None, type=float, metavar="PCC",
                     help="Stop asking once a snapshot's PCC reaches this (needs a Φ*: simulated runs)."),
        click.option("--exact-sources", is_flag=True,
                     help="Take every triplet answer as exact, instead of fitting each source at the flip rate "
                          "its attention checks (people) or order swaps (--order-swap, an LLM) show."),
        click.option("--learner", default="auto", show_default=True,
                     type=click.Choice(["auto", "gradient", "exact", "direct", "pivot"]),
                     help="auto: pivot (Nyström) for the pivot design, exact for pair designs up to p = 40, "
                          "direct for the constructive and eigen designs, gradient otherwise."),
        click.option("--rank", default=None, type=int, help="Columns of U [default: min(p, 512)]."),
        click.option("--lr", default=0.01, show_default=True, type=float,
                     help="Gradient learner: Adam's learning rate (the final fit decays it on a cosine)."),
        click.option("--device", default="cpu", show_default=True, help="cpu or cuda."),
        click.option("--max-rows", default=1_000_000, show_default=True, type=int,
                     help="Gradient learner: answers of a kind held for fitting; beyond, a uniform sample of all "
                          "of them (every answer stays stored). 0: hold all."),
        click.option("--learn-sharpness", is_flag=True,
                     help="Gradient learner: fit each source's answer sharpness κ (≈ 1/T for answers at temperature "
                          "T) by maximum likelihood instead of taking every answer at κ = 50."),
        click.option("--chunk", default=None, type=int,
                     help="Queries per transaction [default: budget/500, within 64–16384]."),
        click.option("--seed", default=0, show_default=True, type=int,
                     help="Seeds the design, the simulated oracle and the learner: a run is reproducible."),
        click.option("--run-id", default=None, help="Name the run; an existing id resumes it."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run_config(opts: dict):
    from ..agents import OracleConfig
    from ..agents.bisection import BisectionConfig
    from ..queries.designs import DesignConfig
    from ..learners import LearnerConfig
    from ..loop import RunConfig
    from ..agents.pool import PoolConfig, parse_member

    members = tuple(parse_member(m) for m in opts["members"])
    from ..targets.load import with_descriptions

    return RunConfig(
        target=with_descriptions(opts["target"], opts["descriptions"], opts["force_descriptions"],
                                 opts["explanation_model"]),
        design=DesignConfig(name=opts["design"], mu=opts["mu"], s=opts["max_nnz"], dist=opts["dist"],
                            block=opts["block"], rank_tol=opts["rank_tol"], k=opts["k"]),
        agent=opts["agent"],
        oracle=OracleConfig(noise=opts["noise"], temperature=opts["temperature"], flip=opts["flip"],
                            tie_band=opts["tie_band"], seed=opts["seed"]),
        budget=opts["budget"],
        learner=opts["learner"],
        learner_config=LearnerConfig(rank=opts["rank"], lr=opts["lr"], device=opts["device"], seed=opts["seed"],
                                     max_rows=opts["max_rows"] or None, learn_sharpness=opts["learn_sharpness"]),
        chunk=opts["chunk"],
        seed=opts["seed"],
        check_rate=opts["check_rate"],
        holdout=opts["holdout"],
        stop_at=opts["stop_at"],
        noise_aware=False if opts["exact_sources"] else None,
        bisection=BisectionConfig(precision=opts["bisection"]) if opts["bisection"] is not None else None,
        llm=_llm_config(opts) if opts["agent"] == "llm" or any(m.agent == "llm" for m in members) else None,
        batch=_batch_config(opts),
        active=_active_config(opts),
        pool=members or None,
        pool_config=PoolConfig(hard_share=opts["hard_share"], seed=opts["seed"]) if members else None,
    )


def _active_config(opts: dict):
    """The --active strategy, told the oracle's noise when it is simulated (a logistic guess otherwise)."""
    from ..queries.active import ActiveConfig, NoiseModel

    if opts["active"] is None:
        return None
    noise = NoiseModel()
    if opts["agent"] == "oracle" and opts["noise"] != "none":
        noise = NoiseModel(kind=opts["noise"], temperature=opts["temperature"], flip=min(opts["flip"], 0.49))
    if opts["agent"] == "oracle" and opts["design"] == "closest" and opts["tie_band"]:
        noise = dataclasses.replace(noise, tie_band=opts["tie_band"])  # "no clear winner": an outcome of its own
    return ActiveConfig(strategy=opts["active"], noise=noise, seed=opts["seed"])


def _batch_config(opts: dict):
    from ..agents.batch import BatchConfig

    if opts["llm_mode"] == "sync":
        return None
    if opts["agent"] != "llm":
        raise click.UsageError(f"--llm-mode {opts['llm_mode']} is for --agent llm, not {opts['agent']}.")
    return BatchConfig(mode=opts["llm_mode"], discount=opts["batch_discount"], poll_s=opts["batch_poll"],
                       poll_max_s=max(300.0, opts["batch_poll"]))


def _llm_config(opts: dict):
    from ..agents import LLMConfig

    return LLMConfig(base_url=opts["base_url"], model=opts["model"], api_key_env=opts["api_key_env"],
                     batch_size=opts["batch_size"], concurrency=opts["concurrency"], order_swap=opts["order_swap"],
                     structured=opts["structured"], timeout_s=opts["timeout"], max_attempts=opts["max_attempts"],
                     max_tokens=opts["max_tokens"],
                     cost_prompt_1k=opts["cost_prompt_1k"], cost_completion_1k=opts["cost_completion_1k"])


@contextlib.contextmanager
def _stop_on_signals(event: threading.Event | None):
    """While watching, Ctrl+C and SIGTERM end the watch cleanly: the loop learns what is in, stores the
    fit and the run's status, and returns. A second signal interrupts at once."""
    if event is None:
        yield
        return

    def handler(signum, frame):
        if event.is_set():
            raise KeyboardInterrupt
        event.set()
        click.echo(f"\n{signal.Signals(signum).name}: learning what is in, then stopping "
                   "(again to stop at once).", err=True)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def execute_run(config, db_path: str, run_id: str | None, quiet: bool, watch: bool = False,
                poll_s: float = 2.0):
    from ..queries.catalogue import make_design
    from ..loop import run_loop
    from ..targets.load import load_target
    from .progress import RunProgress, spinner

    with spinner(f"loading target {config.target}", quiet=quiet):
        target = load_target(config.target)
        bound = make_design(config.design, target, config.seed).count
    show = RunProgress(f"{config.design.name} on {target.name}", bound, quiet)
    with _open_store(db_path) as store:
        result = None
        try:
            event = threading.Event() if watch else None
            with _stop_on_signals(event):
                result = run_loop(config, store, run_id=run_id, progress=show, target=target, watch=event,
                                  poll_s=poll_s)
            return result
        finally:
            stopped = None
            if result is not None and config.stop_at is not None and result.answers < result.budget \
                    and result.pcc is not None and result.pcc >= config.stop_at:
                stopped = f"stopped at PCC >= {config.stop_at} (--stop-at)"
            show.close(stopped, failed=result is None)


def _print_result(result, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.summary()))
        return
    s = result.summary()
    pcc = "— (nothing to learn from yet)" if s["pcc"] is None else f"{s['pcc']:.6f}"
    click.echo(f"run {s['run_id']}: PCC {pcc} after {s['answers']} answers "
               f"(design bound {s['bound'] if s['bound'] is not None else '—'}), learner {s['learner']}, "
               f"{s['elapsed_s']:.1f}s")
    if "mse" in s:
        click.echo(f"RFM test MSE with Φ̂ {s['mse']:.5f} vs with Φ* {s['mse_truth']:.5f} "
                   f"(identity kernel {s['mse_identity']:.5f})")
    if "pivot" in s:  # the pivot design: its readout without Φ*, and whether the block showed the rank
        pv, dz = s["pivot"], s.get("design", {})
        click.echo(f"Pivot design: rank {dz.get('rank_detected')} seen in a block of {dz.get('block')}, "
                   f"{pv['pivots_per_coordinate_min']}–{pv['pivots_per_coordinate_max']} pivots per coordinate; "
                   f"hold-out pairs' predicted scale vs answered: PCC {pv['holdout_pcc'] or float('nan'):.4f} "
                   f"(n = {pv['holdout_n']})")
        if dz.get("block_full_rank"):
            click.echo(f"Warning: the block of {dz.get('block')} is full rank, so the target's rank may exceed it "
                       "and Φ̂ is at most a rank-block approximation; run again with a larger --block.")
    if s.get("holdout_agreement") is not None:
        click.echo(f"Held-out agreement: Φ̂ predicts {s['holdout_agreement']:.4f} of the held-out answers "
                   "(a triplet's sign, a tuple answer's first place)")
    if "ternary_answers" in s:
        click.echo(f"Ternary answers behind the {s['answers']} pairs (bisection): {s['ternary_answers']} "
                   "(the paper's Figure 1 uses 55 scaled pairs)")
    if "active" in s:
        a = s["active"]
        click.echo(f"Active ({a['strategy']}): {a['chunks']} chunks chosen, {a['score_s_total']:.2f}s scoring "
                   f"candidates, {a['wait_s_total']:.3f}s of it waited for (longest wait {a['wait_s_max']:.3f}s)")
    if "pool" in s:
        pool = s["pool"]
        for name, m in pool["agents"].items():
            acc = "—" if m["accuracy"] != m["accuracy"] else f"{m['accuracy']:.3f} ({m['accuracy_source']})"
            click.echo(f"  {name}: {m['asked']} asked, cost {m['spent']:.2f}, accuracy {acc}")
        r = pool["routing"]
        click.echo(f"Pool cost {pool['total_cost']:.2f}; routing: {r['shared']} shared, {r['hard']} hard to the "
                   f"most reliable, {r['rest']} to the cheapest, {r['skipped']} skipped")
    if s.get("source_noise"):
        click.echo(f"Noise-aware: answers fitted at the flip rates {_rates(s['source_noise'])}")
    if s.get("source_sharpness"):
        kappas = ", ".join(f"{name} {k:.1f}" for name, k in s["source_sharpness"].items())
        click.echo(f"Sharpness learnt (κ; ≈ 1/T for answers at temperature T): {kappas}")
    if "llm" in s:
        u = s["llm"]
        bias = u.get("position_bias_rate")
        click.echo(f"LLM {u['model']}: {u['requests']} requests, {u['prompt_tokens']} + {u['completion_tokens']} "
                   f"tokens, cost {u['cost']:.4f}; answers {u['answers']}; structured output {u.get('structured')}"
                   + ("" if bias is None else f"; position-bias rate {bias:.3f} over {u['swap_pairs']} swapped pairs"))
        if "batches" in u:
            b = u["batches"]
            click.echo(f"Batches ({u['mode']}): {b['files']} files, {b['requests']} requests, {b['bytes']:,} bytes, "
                       f"status {b['status']}; cost {u['cost']:.4f} at the batch price (−{u['discount']:.0%}), "
                       f"{u['cost_sync']:.4f} synchronously")


@main.command()
@run_options
@db_option
@json_option
@click.option("--watch", is_flag=True,
              help="Stay up while people (or another deferred agent) answer: learn as answers arrive, queue an "
                   "active run's next chunk, stop on Ctrl+C / SIGTERM or when every asked query is answered.")
@click.option("--poll", "poll_s", default=2.0, show_default=True, type=click.FloatRange(0.05),
              help="With --watch: seconds between looks for new answers.")
@_fail_cleanly
def run(db_path: str, as_json: bool, run_id: str | None, watch: bool, poll_s: float, **opts) -> None:
    """Run (or resume, with an existing --run-id) one feedback loop."""
    config = _run_config(opts)
    result = execute_run(config, db_path, run_id, quiet=as_json, watch=watch, poll_s=poll_s)
    if config.agent == "human":
        _print_human(result, db_path, as_json)
    else:
        _print_result(result, as_json)
        if any(m.agent == "human" for m in config.pool or ()) and not as_json:
            _print_queue(result.run_id, db_path)
        if config.batch is not None and config.batch.mode == "offline" and result.pcc is None and not as_json:
            click.echo(f"Offline: `fbloop batch export {result.run_id} --out requests.jsonl` writes the requests for "
                       f"an engine, `fbloop batch ingest {result.run_id} results.jsonl` stores its output; then run "
                       "this command again to learn.")


def _print_human(result, db_path: str, as_json: bool) -> None:
    from ..agents.people import waiting
    from ..store import Store

    with Store(db_path) as store:
        info = {**result.summary(), **store.queue_progress(result.run_id), "waiting": waiting(store, result.run_id)}
    if as_json:
        click.echo(json.dumps(info, default=float))
        return
    if info["pcc"] is not None:
        click.echo(f"learned from {info['answers']} answers: PCC {info['pcc']:.6f}")
    if info.get("source_noise"):
        click.echo(f"Each person's answers fitted at the flip rate their attention checks show: "
                   f"{_rates(info['source_noise'])}")
    _print_queue(info["run_id"], db_path)


def _rates(eps: dict[str, float]) -> str:
    return ", ".join(f"{name} {e:.3f}" for name, e in eps.items())


def _print_queue(run_id: str, db_path: str) -> None:
    """What waits for people in the app, and how to learn from their answers."""
    from ..store import Store

    with Store(db_path) as store:
        info = store.queue_progress(run_id)
        kind = (store.query_shape(run_id) or ("triplet", 2))[0]
    noun = "triplets" if kind == "triplet" else f"{kind} questions"
    click.echo(f"run {run_id}: {info['queued']} {noun} queued for people ({info['checks']} attention checks), "
               f"{info['answered']} answered so far.")
    click.echo(f"Invite people with fbloop annotators add NAME --run {run_id} --db {db_path} (a secret link each) "
               f"and serve the form with fbloop app --db {db_path}; run this command again with --run-id {run_id} "
               "to learn from the answers (add --watch to learn as they arrive).")


@main.command()
@db_option
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the designs and the learner.")
@_fail_cleanly
def demo(db_path: str, seed: int) -> None:
    """The simulated loop on the paper's Figure 1 RFM target, three designs, live PCC."""
    from ..loop.reproduce import demo_configs

    rows = []
    for config in demo_configs(seed):
        result = execute_run(config, db_path, None, quiet=False)
        _print_result(result, False)
        rows.append((config.design.name, result))
    click.echo("\nSummary (RFM target of the paper's Figure 1, p = 10):")
    click.echo(f"{'design':<14}{'answers':>8}{'bound':>7}{'PCC':>12}{'MSE Φ̂':>10}{'MSE Φ*':>10}{'time':>8}")
    for name, r in rows:
        click.echo(f"{name:<14}{r.answers:>8}{r.bound or 0:>7}{r.pcc:>12.7f}{r.extra.get('mse', float('nan')):>10.5f}"
                   f"{r.extra.get('mse_truth', float('nan')):>10.5f}{r.elapsed_s:>7.1f}s")
    click.echo(f"Runs stored in {db_path}; export with: fbloop export RUN_ID --db {db_path} --out answers.csv")
