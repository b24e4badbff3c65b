"""Answers to reach PCC 0.9 with active tuple questions against random ones (the oracle agent).

For each kind (``rank:4``, ``closest:4`` by default), seed and strategy, one :func:`fbloop.loop.run_loop`
with the simulated oracle (Plackett–Luce noise, ``--noise logistic --temperature 0.1`` by default) on
sparse activations (the design's defaults, μ = 0.9, s = 3) stops at the first live PCC snapshot ≥ the
goal (``stop_at``; a snapshot and a chunk every ``--every`` answers), and the cell records the answers
asked by then (``None``: not within ``--max-answers``). Strategies:

- ``fixed``: the tuple design's own random questions, no ``--active`` (as ``bench_tuples.py`` runs them);
- ``random``: ``--active random``, the same law through the active loop — which gives the learner
  ``ACTIVE_STEPS`` (100) steps a chunk where a fixed design gets 20, so it is the control that
  isolates the choice of questions;
- ``uncertainty``, ``ensemble``: the scores of :mod:`fbloop.queries.active_tuples`.

    python benchmarks/bench_active_tuples.py                        # p = 32, rank 8; 2 seeds
    python benchmarks/bench_active_tuples.py --kinds rank:4 --strategies random ensemble --seeds 0

Writes ``benchmarks/results/active_tuples.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent

STRATEGIES = ("fixed", "random", "uncertainty", "ensemble")


def one_cell(spec: str, target, kind: str, seed: int, strategy: str, args, db: Path) -> dict:
    from fbloop.agents.oracle import OracleConfig
    from fbloop.learners import LearnerConfig
    from fbloop.loop import RunConfig, run_loop
    from fbloop.queries.active import ActiveConfig, NoiseModel
    from fbloop.queries.designs import DesignConfig
    from fbloop.store import Store

    name, _, k = kind.partition(":")
    noise = NoiseModel(kind=args.noise, temperature=args.temperature, flip=min(args.flip, 0.49))
    active = None if strategy == "fixed" else ActiveConfig(strategy=strategy, noise=noise, seed=seed,
                                                           rank_outcome=args.rank_outcome)
    config = RunConfig(target=spec, design=DesignConfig(name=name, k=int(k) if k else None), budget=args.max_answers,
                       chunk=args.every, snapshot_every=args.every, stop_at=args.goal, rfm_mse=False,
                       oracle=OracleConfig(noise=args.noise, temperature=args.temperature, flip=args.flip, seed=seed),
                       learner_config=LearnerConfig(seed=seed, final_steps=1, polish=False), active=active, seed=seed)
    t0 = time.perf_counter()
    with Store(db) as store:
        result = run_loop(config, store, target=target)
        snaps = store.snapshots(result.run_id)
    reached = next((s["answers"] for s in snaps if s["pcc"] is not None and s["pcc"] >= args.goal
                    and not s["extra"].get("final")), None)
    return {"target": spec, "kind": kind, "strategy": strategy, "seed": seed, "answers": reached,
            "asked": result.answers, "last_live_pcc": next((s["pcc"] for s in reversed(snaps)
                                                            if not s["extra"].get("final")), None),
            "scoring_s": (result.extra.get("active") or {}).get("score_s_total"),
            "seconds": round(time.perf_counter() - t0, 1)}


def summary(cells: list[dict]) -> list[dict]:
    """Per target, kind and strategy: the answers of each seed, their geometric mean, and the means of
    ``fixed`` and of ``random`` over it (``> 1``: the strategy needs fewer); ``None`` where a seed missed."""
    import math

    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["target"], c["kind"], c["strategy"]), []).append(c)

    def gmean(key: tuple) -> float | None:
        got = [c["answers"] for c in groups.get(key, [])]
        return math.exp(sum(map(math.log, got)) / len(got)) if got and all(got) else None

    out = []
    for (spec, kind, strategy), group in groups.items():
        mean = gmean((spec, kind, strategy))
        row = {"target": spec, "kind": kind, "strategy": strategy,
               "answers": [c["answers"] for c in sorted(group, key=lambda c: c["seed"])],
               "geomean": round(mean, 1) if mean else None}
        for base in ("fixed", "random"):
            b = gmean((spec, kind, base))
            row[f"{base}_ratio"] = round(b / mean, 3) if b and mean else None
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", nargs="+", default=["synthetic:p=32,rank=8"])
    ap.add_argument("--kinds", nargs="+", default=["rank:4", "closest:4"])
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--goal", type=float, default=0.9)
    ap.add_argument("--every", type=int, default=16, help="answers between PCC snapshots (and per chunk)")
    ap.add_argument("--max-answers", type=int, default=6000)
    ap.add_argument("--noise", default="logistic", choices=["none", "logistic", "flip"])
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--flip", type=float, default=0.1)
    ap.add_argument("--rank-outcome", default=None, choices=["full", "first"],
                    help="rank questions: score the whole ranking (the default) or its first place")
    ap.add_argument("--out", default=str(ROOT / "results" / "active_tuples.json"))
    args = ap.parse_args(argv)

    from fbloop.targets.load import load_target

    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.targets:
            target = load_target(spec)
            for kind in args.kinds:
                for seed in args.seeds:
                    for strategy in args.strategies:
                        cell = one_cell(spec, target, kind, seed, strategy, args, Path(tmp) / "bench.db")
                        cells.append(cell)
                        print(json.dumps(cell), flush=True)
    out = {"goal": args.goal, "every": args.every, "rank_outcome": args.rank_outcome or "full",
           "noise": {"kind": args.noise, "temperature": args.temperature, "flip": args.flip},
           "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
           "summary": summary(cells), "cells": cells}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
