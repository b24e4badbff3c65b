"""Mixed agent pool: the cost of reaching a PCC with people alone, a cheap noisy LLM alone, or both.

Every arm is a real run through :func:`fbloop.loop.run_loop` (SQLite on disk,
``--agent pool``, an active strategy choosing the triplets, the learner told each
member's estimated reliability):

- **people**: a noise-free oracle standing in for people, cost 1.0 per answer;
- **llm**: the LLM agent — the real ``openai`` client over HTTP — against the local
  OpenAI-compatible server (``fbloop serve-oracle``) whose simulated oracle answers
  with logistic noise of temperature ``--llm-temperature`` (it errs on close calls,
  as a model does), cost 0.01 per answer;
- **pool**: both in one pool; the ``--hard-share`` of each chunk the learner is least
  sure about goes to people (the reference member), the rest to the LLM, and a
  ``--shared-share`` slice to both measures the LLM's accuracy.

Each arm stops once a snapshot's PCC reaches ``--level`` (``RunConfig.stop_at``) or at
its answer cap; the cost at the first snapshot at or above the level is the figure
(snapshots every chunk). Reported: the median over seeds per arm and whether the
pool's median is below the cheaper single agent's.

    python benchmarks/bench_pool.py                 # p = 32, rank 8, 2 seeds, PCC 0.98 (~35 min on 2 cores)
    python benchmarks/bench_pool.py --quick         # one seed, PCC 0.95: a smoke run

Writes benchmarks/results/pool_cost.json and pool_cost.png (PCC against cost per arm).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("OPENAI_API_KEY", "local-oracle")  # the local server takes any key

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from fbloop.agents import LLMConfig, OracleConfig  # noqa: E402
from fbloop.agents.pool import MemberConfig, MemberSpec, PoolConfig  # noqa: E402
from fbloop.agents.server import ServerConfig, serve  # noqa: E402
from fbloop.learners import LearnerConfig  # noqa: E402
from fbloop.loop import RunConfig, run_loop  # noqa: E402
from fbloop.queries.active import ActiveConfig, NoiseModel  # noqa: E402
from fbloop.queries.designs import DesignConfig  # noqa: E402
from fbloop.store import Store  # noqa: E402

OUT = Path(__file__).parent / "results"
ARMS = ("people", "llm", "pool")
CAPS = {"people": 6_000, "llm": 120_000, "pool": 30_000}  # llm: 1,200 at 0.01, above the pool's ~1,000


def members(arm: str, seed: int) -> tuple[MemberSpec, ...]:
    people = MemberSpec("people", "oracle", OracleConfig(seed=seed), MemberConfig(cost=1.0, reference=True))
    llm = MemberSpec("llm", "llm", OracleConfig(), MemberConfig(cost=0.01))
    return {"people": (people,), "llm": (llm,), "pool": (people, llm)}[arm]


def run_arm(arm: str, spec: str, seed: int, args: argparse.Namespace, base_url: str, db: Path) -> dict:
    cap = int(CAPS[arm] * args.cap_scale)
    noise = NoiseModel("logistic", temperature=args.llm_temperature) if arm != "people" else NoiseModel("none")
    cfg = RunConfig(
        target=spec, design=DesignConfig(name="triplet"), agent="pool", pool=members(arm, seed),
        pool_config=PoolConfig(hard_share=args.hard_share, shared_share=args.shared_share, seed=seed),
        llm=LLMConfig(base_url=base_url, model="fbloop-oracle", batch_size=8, concurrency=4),
        active=ActiveConfig(strategy=args.strategy, noise=noise, seed=seed),
        learner_config=LearnerConfig(rank=args.rank, seed=seed, threads=1),
        budget=cap, chunk=args.chunk, snapshot_every=args.chunk, stop_at=args.level, rfm_mse=False, seed=seed)
    t0 = time.perf_counter()
    with Store(db) as store:
        result = run_loop(cfg, store, run_id=f"{arm}-{seed}")
        snaps = store.snapshots(result.run_id)
    curve = [{"answers": s["answers"], "pcc": s["pcc"], "cost": s["extra"].get("cost")}
             for s in snaps if not s["extra"].get("final")]
    hit = next((c for c in curve if c["pcc"] is not None and c["pcc"] >= args.level), None)
    return {"arm": arm, "seed": seed, "cap": cap, "reached": hit is not None,
            "cost": hit["cost"] if hit else None, "answers": hit["answers"] if hit else None,
            "final_pcc": result.pcc, "final_cost": result.extra.get("cost"), "pool": result.extra.get("pool"),
            "active": result.extra.get("active"), "seconds": time.perf_counter() - t0, "curve": curve}


def summarise(rows: list[dict]) -> dict:
    """Per arm: runs, how many reached the level, the median cost and answers (inf when the median run
    did not reach it) and a lower bound on the median cost: a run stopped at its cap before the level
    would have cost at least what it had spent (``final_cost``)."""
    out = {}
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        costs = [r["cost"] if r["reached"] else np.inf for r in mine]
        floor = [r["cost"] if r["reached"] else (r.get("final_cost") or 0.0) for r in mine]
        out[arm] = {"runs": len(mine), "reached": sum(r["reached"] for r in mine),
                    "median_cost": float(np.median(costs)) if mine else None,
                    "median_cost_at_least": float(np.median(floor)) if mine else None,
                    "median_answers": float(np.median([r["answers"] if r["reached"] else np.inf for r in mine]))
                    if mine else None}
    return out


def pool_cheaper(summary: dict) -> bool | None:
    """True when the pool's median cost is below each single agent's, False when it is not below one
    of them, None when that is not known: a single agent whose median run never reached the level
    spent less than the pool before its cap (its true cost is then only bounded from below)."""
    pool = summary.get("pool", {})
    alone = [summary[a] for a in ("people", "llm") if summary.get(a, {}).get("runs")]
    if not pool.get("runs") or not alone:
        return None
    if any(pool["median_cost"] >= a["median_cost"] for a in alone):
        return False
    if all(pool["median_cost"] < a["median_cost_at_least"] for a in alone):
        return True
    return None


def plot(rows: list[dict], summary: dict, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = {"people": "tab:blue", "llm": "tab:orange", "pool": "tab:green"}
    for r in rows:
        c = [x for x in r["curve"] if x["cost"]]
        arm = summary[r["arm"]]
        cost = (f"median cost {arm['median_cost']:,.1f}" if np.isfinite(arm["median_cost"])
                else f"not reached; median cost > {arm['median_cost_at_least']:,.0f}")
        label = f"{r['arm']} ({cost})" if r["seed"] == 0 else None
        ax.plot([x["cost"] for x in c], [x["pcc"] for x in c], color=colours[r["arm"]], alpha=0.8, label=label)
    ax.axhline(args.level, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("total cost (people 1.0 per answer, LLM 0.01)")
    ax.set_ylabel("PCC(Φ̂, Φ*)")
    ax.set_ylim(max(0.0, args.level - 0.4), 1.0)
    ax.set_title(f"Agent pool on {args.target}: cost to PCC {args.level}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="synthetic:p=32,rank=8")
    ap.add_argument("--level", type=float, default=0.98)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--strategy", default="ensemble", choices=["random", "uncertainty", "ensemble"])
    ap.add_argument("--hard-share", type=float, default=0.02)
    ap.add_argument("--shared-share", type=float, default=0.01, help="asked of both: the LLM's accuracy")
    ap.add_argument("--llm-temperature", type=float, default=0.3, help="logistic noise of the server's oracle")
    ap.add_argument("--rank", type=int, default=16, help="learner rank (twice the target's)")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--cap-scale", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="one seed, PCC 0.95, caps / 4")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--merge", action="store_true",
                    help="keep the stored runs of other arms and seeds (a run of an arm and seed replaces its own)")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.level, args.cap_scale = 1, 0.95, args.cap_scale / 4
    torch.set_num_threads(1)
    arms = [a for a in args.arms.split(",") if a]
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            spec = f"{args.target},seed={seed}"
            server = ServerConfig(target=spec, oracle=OracleConfig(noise="logistic", temperature=args.llm_temperature,
                                                                   seed=seed), seed=seed)
            with serve(server) as srv:
                for arm in tqdm(arms, desc=f"seed {seed}", unit="arm"):
                    rows.append(run_arm(arm, spec, seed, args, srv.url, Path(tmp) / f"{arm}-{seed}.db"))
                    r = rows[-1]
                    tqdm.write(f"  {arm:<7} seed {seed}: reached={r['reached']} cost={r['cost']} "
                               f"answers={r['answers']} final PCC {r['final_pcc']:.4f} ({r['seconds']:.0f}s)")
    stem = args.out / ("pool_cost_quick" if args.quick else "pool_cost")
    if args.merge and stem.with_suffix(".json").exists():
        ran = {(r["arm"], r["seed"]) for r in rows}
        kept = [r for r in json.loads(stem.with_suffix(".json").read_text())["runs"] if (r["arm"], r["seed"]) not in ran]
        rows = sorted(kept + rows, key=lambda r: (r["seed"], ARMS.index(r["arm"])))
    summary = summarise(rows)
    cheaper = pool_cheaper(summary)
    result = {"benchmark": "pool_cost", "target": args.target, "level": args.level, "seeds": args.seeds,
              "strategy": args.strategy, "hard_share": args.hard_share, "shared_share": args.shared_share, "llm_temperature": args.llm_temperature,
              "people": "noise-free oracle, cost 1.0 per answer",
              "llm": f"LLM agent (openai client over HTTP) against the local server, logistic noise "
                     f"T = {args.llm_temperature}, cost 0.01 per answer",
              "summary": summary, "pool_cheaper_than_either": cheaper,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_average": os.getloadavg()},
              "wall_s": time.perf_counter() - t0, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    plot(rows, summary, args, stem.with_suffix(".png"))
    print(f"{'arm':<8}{'reached':>9}{'median answers':>16}{'median cost':>13}   (PCC {args.level})")
    for arm, s in summary.items():
        if s["runs"]:
            cost = (f"{s['median_cost']:>13,.2f}" if np.isfinite(s["median_cost"])
                    else f"{'>= ' + format(s['median_cost_at_least'], ',.2f'):>13}")
            print(f"{arm:<8}{s['reached']:>5}/{s['runs']:<3}{s['median_answers']:>16,.0f}{cost}")
    print(f"pool cheaper than either agent alone: {cheaper}")
    print(f"wrote {stem.with_suffix('.json')} and .png")


if __name__ == "__main__":
    main()
