"""Tokens and activations to reach PCC 0.9: random triplets at batch 8 against closest-of-k and rank-k.

Issue 21's "must show" table, first part. For each target, seed and question kind, an LLM-agent run
asks ``fbloop serve-oracle``'s server (in-process, 127.0.0.1) through the real ``openai`` client: the
prompts are the real templates, the server reads them back and answers from ``Φ*`` (exactly, or with
the oracle's noise). The run stops at the first PCC snapshot ≥ the goal (``--stop-at``; snapshots every
``--every`` answers, the live learner's PCC), and the cell records

- ``answers``: answers asked when the goal was reached (``None``: not within ``--max-answers``);
- ``tokens``: prompt + completion tokens of those requests, as the server's ``usage`` reports them
  (the local server estimates ~4 characters a token: no tokenizer is installed here);
- ``activations``: activations shown, ``answers × (3 | k + 1)``;
- ``batch``: questions per request (triplets ``--triplet-batch``, tuples each of ``--tuple-batches``);
- the same ratios to random triplets at batch 8 (``> 1``: the kind needs fewer).

    python benchmarks/bench_tuples.py                       # RFM and p = 32, 2 seeds, exact answers
    python benchmarks/bench_tuples.py --targets synthetic:p=128,rank=16 --seeds 0 --max-answers 40000
    python benchmarks/bench_tuples.py --active ensemble       # each kind also chosen by an active strategy

With ``--active STRATEGY`` every kind runs twice, random (as above) and chosen by the strategy under the
server's noise model (:mod:`fbloop.queries.active`, :mod:`fbloop.queries.active_tuples`); the active cells
carry ``"active": STRATEGY`` and their ratios are to the random triplets too.

Writes ``benchmarks/results/tuples.json`` (``--out``).
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

os.environ.setdefault("OPENAI_API_KEY", "bench-tuples-local")
ROOT = Path(__file__).resolve().parent

KINDS = ("triplet", "closest:4", "closest:8", "rank:4", "rank:8")
TARGETS = ("rfm", "synthetic:p=32,rank=8")


def parse_kind(text: str) -> tuple[str, int | None]:
    name, _, k = text.partition(":")
    return name, int(k) if k else None


def shown_per_answer(name: str, k: int | None) -> int:
    return k + 1 if name in ("closest", "rank") else 3


def one_cell(spec: str, target, kind: str, seed: int, args, url: str, db: Path, batch: int = 1,
             active: str | None = None) -> dict:
    from fbloop.agents import LLMConfig
    from fbloop.agents.oracle import OracleConfig
    from fbloop.learners import LearnerConfig
    from fbloop.loop import RunConfig, run_loop
    from fbloop.queries.designs import DesignConfig
    from fbloop.store import Store

    name, k = parse_kind(kind)
    llm = LLMConfig(base_url=url, structured="json_schema", concurrency=8,
                    batch_size=args.triplet_batch if name == "triplet" else batch, cache=False)
    config = RunConfig(target=spec, design=DesignConfig(name=name, k=k, dist=args.dist), agent="llm", llm=llm,
                       budget=args.max_answers, chunk=args.every, snapshot_every=args.every, stop_at=args.goal,
                       rfm_mse=False, oracle=OracleConfig(seed=seed), learner_config=LearnerConfig(seed=seed),
                       seed=seed, active=active_config(active, args, seed))
    t0 = time.perf_counter()
    with Store(db) as store:
        result = run_loop(config, store, target=target)
        use = store.request_usage(result.run_id, [f"llm:{llm.model}"])
        snaps = store.snapshots(result.run_id)
    reached = next((s["answers"] for s in snaps if s["pcc"] is not None and s["pcc"] >= args.goal
                    and not s["extra"].get("final")), None)
    tokens = use["prompt_tokens"] + use["completion_tokens"]
    return {"target": spec, "kind": kind, "batch": llm.batch_size, "seed": seed, "answers": reached, "asked": result.answers,
            "requests": use["requests"], "prompt_tokens": use["prompt_tokens"],
            "completion_tokens": use["completion_tokens"], "tokens": tokens if reached else None,
            "activations": reached * shown_per_answer(name, k) if reached else None,
            "final_pcc": result.pcc, "invalid": use["answers"].get("invalid", 0),
            "seconds": round(time.perf_counter() - t0, 1), **({"active": active} if active else {})}


def active_config(strategy: str | None, args, seed: int):
    """``--active``: the strategy, told the server's noise (as ``fbloop run`` tells it a simulated oracle's)."""
    from fbloop.queries.active import ActiveConfig, NoiseModel

    if strategy is None:
        return None
    noise = NoiseModel(kind=args.noise, temperature=args.temperature, flip=min(args.flip, 0.49))
    return ActiveConfig(strategy=strategy, noise=noise if args.noise != "none" else NoiseModel(), seed=seed)


def ratios(cells: list[dict]) -> list[dict]:
    """Each kind's tokens and activations beside random triplets' (same target and seed)."""
    base = {(c["target"], c["seed"]): c for c in cells if c["kind"] == "triplet" and not c.get("active")}
    out = []
    for c in cells:
        b = base.get((c["target"], c["seed"]))
        row = dict(c)
        for key in ("tokens", "activations", "answers"):
            ok = b is not None and b[key] and c[key]
            row[f"{key}_ratio"] = round(b[key] / c[key], 3) if ok else None
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", nargs="+", default=list(TARGETS))
    ap.add_argument("--kinds", nargs="+", default=list(KINDS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--goal", type=float, default=0.9)
    ap.add_argument("--every", type=int, default=16, help="answers between PCC snapshots (and per chunk)")
    ap.add_argument("--max-answers", type=int, default=20_000)
    ap.add_argument("--triplet-batch", type=int, default=8)
    ap.add_argument("--tuple-batches", nargs="+", type=int, default=[1, 8],
                    help="questions per request for the tuple kinds (each kind runs at each)")
    ap.add_argument("--dist", default="sparse", choices=["sparse", "gaussian"])
    ap.add_argument("--noise", default="none", choices=["none", "logistic", "flip"],
                    help="the server's answers: exact, Plackett–Luce / logistic at --temperature, or --flip")
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--flip", type=float, default=0.1)
    ap.add_argument("--active", default=None, choices=["random", "uncertainty", "ensemble"],
                    help="also run every kind with this active strategy (cells with \"active\")")
    ap.add_argument("--out", default=str(ROOT / "results" / "tuples.json"))
    args = ap.parse_args(argv)

    from fbloop.agents.oracle import OracleConfig
    from fbloop.agents.server import ServerConfig, serve
    from fbloop.targets.load import load_target

    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.targets:
            target = load_target(spec)
            noise = OracleConfig(noise=args.noise, temperature=args.temperature, flip=args.flip)
            with serve(ServerConfig(target=spec, oracle=noise), target=target) as srv:
                for seed in args.seeds:
                    for kind in args.kinds:
                        for batch in ([args.triplet_batch] if kind == "triplet" else args.tuple_batches):
                            for active in (None, args.active) if args.active else (None,):
                                cell = one_cell(spec, target, kind, seed, args, srv.url, Path(tmp) / "bench.db",
                                                batch, active)
                                cells.append(cell)
                                print(json.dumps(cell), flush=True)
    out = {"goal": args.goal, "noise": {"kind": args.noise, "temperature": args.temperature, "flip": args.flip}, "every": args.every, "dist": args.dist, "triplet_batch": args.triplet_batch,
           "tuple_batches": args.tuple_batches,
           "tokens_note": "the local server's usage: about 4 characters a token",
           "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                       "cpus": os.cpu_count()},
           "cells": ratios(cells)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
