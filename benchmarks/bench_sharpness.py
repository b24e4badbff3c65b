"""The learner's answer sharpness κ: fixed at 50 (the default), fixed at 10, or learnt per source.

The gradient learner fits an answer at a scale-free margin times κ (``LearnerConfig.sharpness``): κ = 50
takes answers as nearly exact. ``learn_sharpness`` fits each source's κ instead
(:meth:`fbloop.learners.GradientLearner.fit_sharpness`). For each kind of question, noise and seed a
simulated oracle answers (no LLM: answers, not tokens, are counted here; a kind's tokens per answer do
not depend on κ) and the live learner's PCC is read every ``--every`` answers; the figure is the answers
when it first reaches ``--goal`` (``None``: not within ``--max-answers``), medians over seeds, and each
setting's ratio to κ = 50 (above 1: fewer answers).

    python benchmarks/bench_sharpness.py                       # p = 32, 4 kinds × 4 noises × 3 seeds
    python benchmarks/bench_sharpness.py --seeds 0 --kinds triplet rank:8 --noises logistic:0.2

Writes benchmarks/results/sharpness.json and sharpness.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from bench_tuples import parse_kind, parse_noise  # noqa: E402

MODES = ("fixed:50", "fixed:10", "learn")


def learner_config(mode: str, seed: int):
    from fbloop.learners import LearnerConfig

    base = dict(seed=seed, final_steps=0, polish=False)
    if mode == "learn":
        return LearnerConfig(learn_sharpness=True, **base)
    return LearnerConfig(sharpness=float(mode.split(":")[1]), **base)


def one_run(spec: str, kind: str, noise: str, seed: int, mode: str, args, db: Path) -> dict:
    from fbloop.loop import RunConfig, run_loop
    from fbloop.queries.designs import DesignConfig
    from fbloop.store import Store

    name, k = parse_kind(kind)
    oracle = parse_noise(noise)
    cfg = RunConfig(target=spec, design=DesignConfig(name=name, k=k), budget=args.max_answers, chunk=args.every,
                    snapshot_every=args.every, stop_at=args.goal, rfm_mse=False, seed=seed,
                    oracle=dataclasses.replace(oracle, seed=seed),
                    learner_config=learner_config(mode, seed))
    t0 = time.perf_counter()
    with Store(db) as store:
        res = run_loop(cfg, store)
        snaps = [s for s in store.snapshots(res.run_id) if s["pcc"] is not None and not s["extra"].get("final")]
    reached = next((s["answers"] for s in snaps if s["pcc"] >= args.goal), None)
    return {"target": spec, "kind": kind, "noise": noise, "seed": seed, "mode": mode, "answers": reached,
            "asked": res.answers, "live_pcc": snaps[-1]["pcc"] if snaps else None,
            "sharpness": res.extra.get("source_sharpness"), "seconds": round(time.perf_counter() - t0, 1)}


def summarise(cells: list[dict]) -> list[dict]:
    """Medians over seeds (a seed that missed counts as infinite) and ratios to κ = 50."""
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["target"], c["kind"], c["noise"], c["mode"]), []).append(c)
    out = []
    for (spec, kind, noise, mode), rows in groups.items():
        vals = sorted(r["answers"] if r["answers"] is not None else float("inf") for r in rows)
        m = statistics.median(vals)
        out.append({"target": spec, "kind": kind, "noise": noise, "mode": mode, "seeds": len(rows),
                    "reached": sum(r["answers"] is not None for r in rows),
                    "answers": None if m == float("inf") else m,
                    "per_seed": [r["answers"] for r in sorted(rows, key=lambda r: r["seed"])]})
    base = {(r["target"], r["kind"], r["noise"]): r["answers"] for r in out if r["mode"] == "fixed:50"}
    for r in out:
        b = base.get((r["target"], r["kind"], r["noise"]))
        r["ratio_to_50"] = round(b / r["answers"], 3) if b and r["answers"] else None
    return out


def table(summary: list[dict]) -> str:
    rows = sorted({(r["target"], r["kind"], r["noise"]) for r in summary})
    at = {(r["target"], r["kind"], r["noise"], r["mode"]): r for r in summary}
    lines = ["| target | kind | noise | " + " | ".join(f"κ {m.split(':')[1]}" if ":" in m else "κ learnt"
                                                   for m in MODES) + " |", "|---" * (3 + len(MODES)) + "|"]
    for spec, kind, noise in rows:
        cells = []
        for mode in MODES:
            r = at.get((spec, kind, noise, mode))
            if r is None:
                cells.append("")
                continue
            text = "—" if r["answers"] is None else f"{r['answers']:,.0f}"
            if mode != "fixed:50" and r["ratio_to_50"]:
                text += f" ({r['ratio_to_50']:.2f}×)"
            cells.append(text + f" [{r['reached']}/{r['seeds']}]")
        lines.append(f"| {spec.replace('synthetic:', '')} | {kind} | {noise} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = sorted({(r["target"], r["kind"], r["noise"]) for r in out["summary"]})
    at = {(r["target"], r["kind"], r["noise"], r["mode"]): r for r in out["summary"]}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(rows) + 2), 4.2))
    x = np.arange(len(rows))
    for j, mode in enumerate(MODES[1:]):
        vals = [(at.get((*r, mode)) or {}).get("ratio_to_50") or 0 for r in rows]
        ax.bar(x + (j - 0.5) * 0.4, vals, 0.4, label={"fixed:10": "κ = 10", "learn": "κ learnt"}[mode])
    ax.axhline(1, color="black", lw=0.7)
    ax.set_xticks(x, [f"{k} {n}" for _, k, n in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(f"answers to PCC {out['goal']} at κ = 50 ÷ this")
    ax.set_title(f"live learner, {', '.join(sorted({r[0].replace('synthetic:', '') for r in rows}))}; "
                 f"medians over seeds {out['seeds']} (no bar: goal missed)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=["synthetic:p=32,rank=8"])
    ap.add_argument("--kinds", nargs="+", default=["triplet", "closest:4", "rank:4", "rank:8"])
    ap.add_argument("--noises", nargs="+", default=["none", "logistic:0.05", "logistic:0.2", "flip:0.1"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--goal", type=float, default=0.9)
    ap.add_argument("--every", type=int, default=32)
    ap.add_argument("--max-answers", type=int, default=20_000)
    ap.add_argument("--out", default=str(ROOT / "results" / "sharpness.json"))
    args = ap.parse_args(argv)

    from tqdm import tqdm

    plan = [(s, k, n, seed, m) for s in args.targets for n in args.noises for k in args.kinds for seed in args.seeds
            for m in args.modes]
    cells, t0, load0 = [], time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (spec, kind, noise, seed, mode) in enumerate(tqdm(plan, desc="runs")):
            cell = one_run(spec, kind, noise, seed, mode, args, Path(tmp) / f"r{i}.db")
            cells.append(cell)
            tqdm.write(json.dumps(cell))
    out = {"goal": args.goal, "every": args.every, "max_answers": args.max_answers, "seeds": args.seeds,
           "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                       "load_before": [round(x, 2) for x in load0],
                       "load_after": [round(x, 2) for x in os.getloadavg()]},
           "minutes": round((time.perf_counter() - t0) / 60, 1), "summary": summarise(cells), "cells": cells}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    plot(out, path.with_suffix(".png"))
    print(table(out["summary"]))
    return out


if __name__ == "__main__":
    main()
