"""Active querying: ternary answers needed to reach PCC 0.9 and 0.99, adaptive vs uniform random.

Each run drives the learner in-process: a noisy ternary oracle answers the triplets an
:class:`fbloop.queries.active.ActiveStrategy` asks, in rounds that grow the answer count by
``--growth`` (√2: finer than doubling, so the crossing points are resolved to ±20 %);
after each round the :class:`~fbloop.learners.GradientLearner` takes
``max(100, 3·N/1024)`` more Adam steps (about three passes over the ``N`` answers so far,
warm-started) and PCC(Φ̂, Φ*) is read from the factors. A run stops once PCC ≥ 0.99 or at
the target's answer cap. Every strategy starts from the same ``max(50, 3p)`` uniformly random
answers (the same ones, for a given seed).

Grid: targets RFM (p = 10, rank 3) and synthetic p ∈ {32, 128, 512} with ranks 8 / 16 / 32
(a new dictionary per seed); oracle noise logistic at T = 0.05 and T = 0.2 and 10 % flips;
strategies random / uncertainty / ensemble; 5 seeds. The strategy is told the oracle's noise
model (a simulation knows it), and so is the learner: rank min(p, max(10, 2·rank)) (a guess of
twice the true rank), sharpness κ = 1/T under logistic noise (the matched likelihood) and κ = 20
under flips (ln 9 / 0.1: the logistic that is 90 % sure at a margin of 0.1), where it is also
given the flip rate (``set_source_noise``: the flip-robust likelihood); identical for every
strategy. (Runs stored before the flip rate was given say ``"source_noise": null``; ``--replace``
runs a subset again.) The answers to reach a level are interpolated log-linearly between the two rounds
around its first crossing; "answers to 0.9" is the median over seeds, and the ratio is
random's median over the adaptive strategy's. A median that did not reach the level within
the cap is censored: ratios are then bounds (">=" or "<="), and the JSON says so.

``--strategies … oracle-kl`` adds a diagnostic that reads ``Φ*`` (:class:`OracleInformed`): it asks the
pool's candidates whose answer law ``Φ̂`` predicts worst. No real run can use it; the answers it needs
bound what any score computed from ``Φ̂`` could save by picking from the same pool. It is reported beside
the strategies and never counts towards the goal.

"Hold-out agreement" is prequential: each round's random hold-out queries (10 % of an adaptive
batch, all of a random one) are scored by the learner *before* their answers are added.

    python benchmarks/bench_active.py --quick            # RFM and p = 32, 2 seeds
    python benchmarks/bench_active.py                    # the full grid (hours on 2 cores)
    python benchmarks/bench_active.py --targets p512 --seeds 2 --resume   # add to the stored grid
    python benchmarks/bench_active.py --pool             # people vs a cheap noisy agent vs both (p = 32)

Writes benchmarks/results/active_{quick,grid}.json, .png (PCC against answers) and
_ratio.png (the ratio at PCC 0.9 and 0.99, with the goal of 3× at 0.9); --pool writes
active_pool.json.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # a shared 2-core machine: BLAS threads thrash (an SVD took 1 s, not 2 ms)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fbloop import metrics, targets  # noqa: E402
from fbloop.agents import OracleAgent, OracleConfig  # noqa: E402
from fbloop.learners import GradientLearner, LearnerConfig  # noqa: E402
from fbloop.metrics import triplet_agreement  # noqa: E402
from fbloop.queries.active import ActiveConfig, ActiveStrategy, NoiseModel, answer_probability, compress_factor, relative_margins
from fbloop.queries.designs import DesignConfig  # noqa: E402
from fbloop.sparse import SparseBatch  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # the bar is a nicety
    tqdm = None

OUT = Path(__file__).parent / "results"
LEVELS = (0.9, 0.99)
GOAL = 3.0  # the goal: ≥ 3× fewer answers than random at PCC 0.9
# name: (spec without seed, answer cap)
TARGETS = {
    "rfm": ("rfm", 20_000),
    "p32": ("synthetic:p=32,rank=8", 60_000),
    "p128": ("synthetic:p=128,rank=16", 300_000),
    "p512": ("synthetic:p=512,rank=32", 1_000_000),
}
NOISES = {
    "logistic-T0.05": OracleConfig(noise="logistic", temperature=0.05),
    "logistic-T0.2": OracleConfig(noise="logistic", temperature=0.2),
    "flip-0.1": OracleConfig(noise="flip", flip=0.1),
}
STRATEGIES = ("random", "uncertainty", "ensemble")
# Diagnostics that read Φ*, so no real run can use them: a ceiling for any score computed from Φ̂, not
# candidates for the goal. `--strategies oracle-kl` adds them to a grid.
DIAGNOSTICS = ("oracle-kl",)


class OracleInformed(ActiveStrategy):
    """Diagnostic ``oracle-kl``: asks the candidates whose answers ``Φ̂`` predicts worst, judged by ``Φ*``.

    Score ``KL(P* ‖ P̂)``: the divergence of the answer law ``Φ̂`` predicts from the one the oracle
    answers by, both under the run's noise model (``fbloop.queries.active.answer_probability`` of the relative
    margins). It is the learner's expected excess loss on the candidate, which no score computed from
    ``Φ̂`` alone can know; the answers it needs to a PCC bound what picking from the same pool could save.
    """

    def __init__(self, p: int, config: ActiveConfig, design: DesignConfig, truth: np.ndarray):
        super().__init__(p, config, design)
        self.truth = truth

    def scores(self, a: SparseBatch, b: SparseBatch, c: SparseBatch, factor: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        noise = self.config.noise
        eps = 1e-12
        p_hat = np.clip(answer_probability(relative_margins(a, b, c, factor), noise), eps, 1 - eps)
        p_true = np.clip(answer_probability(relative_margins(a, b, c, self.truth), noise), eps, 1 - eps)
        return p_true * np.log(p_true / p_hat) + (1 - p_true) * np.log((1 - p_true) / (1 - p_hat))


def load(name: str, seed: int) -> targets.Target:
    spec = TARGETS[name][0]
    return targets.load_target(spec if spec == "rfm" else f"{spec},seed={seed}")


def learner_config(t: targets.Target, oracle: OracleConfig, seed: int) -> LearnerConfig:
    kappa = 1.0 / oracle.temperature if oracle.noise == "logistic" else 20.0
    return LearnerConfig(rank=min(t.p, max(10, 2 * t.rank)), sharpness=kappa, seed=seed, threads=1)


def run_one(name: str, noise: str, strategy: str, seed: int, growth: float, cap: int | None = None,
            stop_at: float = LEVELS[-1], active: dict | None = None) -> dict:
    """One run: PCC after each round until ``stop_at`` or the cap."""
    t = load(name, seed)
    p = t.p
    cap = cap or TARGETS[name][1]
    ocfg = NOISES[noise]
    # The oracle needs only Φ* = V Vᵀ: a rank-r factor gives the same answers (up to rounding) and,
    # for a synthetic p = 512 dictionary stored as V = Dᵀ of shape (512, 512), answers 16× cheaper.
    oracle_factor = compress_factor(t.factor, t.rank)
    oracle = OracleAgent(oracle_factor, SparseBatch(np.zeros((1, 1), np.int64),
                         np.ones((1, 1)), p), dataclasses.replace(ocfg, seed=seed))
    model = NoiseModel(kind=ocfg.noise, temperature=ocfg.temperature, flip=ocfg.flip)
    if strategy in DIAGNOSTICS:  # scored by OracleInformed; the config only carries pool and hold-out share
        acfg = ActiveConfig(strategy="uncertainty", noise=model, seed=seed, relevance=0.0, **(active or {}))
        strat = OracleInformed(p, acfg, DesignConfig(name="triplet"), oracle_factor)
    else:
        acfg = ActiveConfig(strategy=strategy, noise=model, seed=seed, **(active or {}))
        strat = ActiveStrategy(p, acfg, DesignConfig(name="triplet"))
    lcfg = learner_config(t, ocfg, seed)
    learner = GradientLearner(p, lcfg)
    if ocfg.noise == "flip":
        learner.set_source_noise({0: ocfg.flip})  # the oracle answers as source 0
    rng = np.random.default_rng([seed, 7])
    n, target_n, factor = 0, max(50, 3 * p), None
    rounds: list[dict] = []
    t_select = t_answer = t_learn = 0.0
    t0 = time.perf_counter()
    while True:
        t1 = time.perf_counter()
        prop = strat.propose(target_n - n, factor, rng, start=n)
        t2 = time.perf_counter()
        ans = oracle.answer(prop.queries)
        t3 = time.perf_counter()
        q, hold = prop.queries, prop.holdout
        agree = None
        if factor is not None and hold.any():  # prequential: before these answers are learned
            pred = learner.predict_triplets(q.a[hold], q.b[hold], q.c[hold], band=0.0)
            agree = triplet_agreement(pred, ans.value[hold])
        learner.add_triplets(q.a, q.b, q.c, ans.value)
        n = target_n
        learner.step(max(100, int(3 * n / lcfg.batch_size)))
        factor = learner.factor()
        pcc = metrics.pcc_factored(factor, t.factor)
        t4 = time.perf_counter()
        t_select, t_answer, t_learn = t_select + t2 - t1, t_answer + t3 - t2, t_learn + t4 - t3
        rounds.append({"answers": n, "pcc": pcc, "holdout": int(hold.sum()), "holdout_agreement": agree})
        if pcc >= stop_at or n >= cap:
            break
        target_n = min(cap, int(np.ceil(n * growth)))
    return {"target": name, "p": p, "rank": t.rank, "noise": noise, "strategy": strategy, "seed": seed,
            "learner": {"rank": learner.rank, "sharpness": lcfg.sharpness, "batch_size": lcfg.batch_size,
                        "source_noise": learner.source_noise.get(0, 0.0)},
            "active": {k: v for k, v in acfg.__dict__.items() if k != "noise"} | {"noise": model.__dict__},
            "cap": cap, "rounds": rounds, "reached": {str(lv): crossing(rounds, lv) for lv in LEVELS},
            "seconds": {"total": time.perf_counter() - t0, "select": t_select, "answer": t_answer,
                        "learn": t_learn}}


def crossing(rounds: list[dict], level: float) -> float | None:
    """Answers at the first crossing of ``level``, log-linear between rounds; None if never."""
    prev = None
    for r in rounds:
        if r["pcc"] >= level:
            if prev is None:
                return float(r["answers"])
            (n0, p0), (n1, p1) = prev, (r["answers"], r["pcc"])
            f = (level - p0) / (p1 - p0)
            return float(np.exp(np.log(n0) + f * (np.log(n1) - np.log(n0))))
        prev = (r["answers"], r["pcc"])
    return None


def censored_median(values: list[float | None]) -> tuple[float | None, bool]:
    """Median with None as +∞: ``(value, censored)``; a censored median is only known to exceed the cap."""
    xs = sorted(np.inf if v is None else v for v in values)
    m = len(xs)
    med = xs[m // 2] if m % 2 else 0.5 * (xs[m // 2 - 1] + xs[m // 2])
    return (None, True) if not np.isfinite(med) else (float(med), False)


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for name in TARGETS:
        for noise in NOISES:
            sub = [r for r in runs if r["target"] == name and r["noise"] == noise]
            if not sub:
                continue
            cap = max(r["cap"] for r in sub)
            row = {"target": name, "p": sub[0]["p"], "noise": noise, "cap": cap, "strategies": {},
                   # the flip rate the learner was given (None: a run stored before it was given one)
                   "learner_source_noise": sorted({r["learner"].get("source_noise") for r in sub}, key=str)}
            for strat in STRATEGIES + DIAGNOSTICS:
                mine = [r for r in sub if r["strategy"] == strat]
                if mine:
                    row["strategies"][strat] = {
                        "seeds": sorted(r["seed"] for r in mine),
                        **{f"answers_to_{lv}": censored_median([r["reached"][str(lv)] for r in mine])[0]
                           for lv in LEVELS},
                        **{f"reached_{lv}": sum(r["reached"][str(lv)] is not None for r in mine) for lv in LEVELS},
                        "seconds": float(np.median([r["seconds"]["total"] for r in mine])),
                    }
            rand = row["strategies"].get("random")
            for strat in STRATEGIES[1:] + DIAGNOSTICS:
                mine = row["strategies"].get(strat)
                if not (mine and rand):
                    continue
                for lv in LEVELS:
                    mine[f"ratio_{lv}"] = ratio(rand[f"answers_to_{lv}"], mine[f"answers_to_{lv}"], cap)
            best = [s for k, s in row["strategies"].items() if "ratio_0.9" in s and k not in DIAGNOSTICS]
            if best:
                top = max(best, key=lambda s: s["ratio_0.9"]["value"] or 0.0)
                val = top["ratio_0.9"]["value"]
                row["goal_3x_at_0.9"] = {
                    "best_strategy": next(k for k, v in row["strategies"].items() if v is top),
                    "ratio": val, "bound": top["ratio_0.9"]["bound"],
                    "met": bool(val is not None and val >= GOAL and top["ratio_0.9"]["bound"] in ("=", ">=")),
                    "missed_by": ("no strategy reached PCC 0.9 within the cap" if val is None else
                                  None if val >= GOAL else f"{GOAL / val:.2f}x short ({val:.2f}x of {GOAL:.0f}x)"),
                }
            rows.append(row)
    return rows


def ratio(rand: float | None, adaptive: float | None, cap: int) -> dict:
    """random / adaptive answers; a censored side turns the value into a bound at the cap."""
    if rand is not None and adaptive is not None:
        return {"value": rand / adaptive, "bound": "="}
    if rand is None and adaptive is not None:
        return {"value": cap / adaptive, "bound": ">="}
    if rand is not None:
        return {"value": rand / cap, "bound": "<="}
    return {"value": None, "bound": "neither reached the level"}


def fmt_n(x: float | None, cap: int) -> str:
    return f">{cap:,}" if x is None else f"{x:,.0f}"


def fmt_ratio(r: dict | None) -> str:
    if not r or r["value"] is None:
        return "—"
    return {"=": "", ">=": "≥", "<=": "≤"}[r["bound"]] + f"{r['value']:.2f}×"


def table(rows: list[dict]) -> str:
    head = (f"{'target':<7}{'noise':<16}{'strategy':<13}{'n@0.9':>10}{'n@0.99':>11}"
            f"{'ratio@0.9':>11}{'ratio@0.99':>11}{'reached':>10}{'s/run':>7}")
    out = [head, "-" * len(head)]
    for row in rows:
        for strat, s in row["strategies"].items():
            k = len(s["seeds"])
            reached = f"{s['reached_0.9']}/{k},{s['reached_0.99']}/{k}"
            out.append(f"{row['target']:<7}{row['noise']:<16}{strat:<13}"
                       f"{fmt_n(s['answers_to_0.9'], row['cap']):>10}{fmt_n(s['answers_to_0.99'], row['cap']):>11}"
                       f"{fmt_ratio(s.get('ratio_0.9')):>11}{fmt_ratio(s.get('ratio_0.99')):>11}"
                       f"{reached:>10}{s['seconds']:>7.0f}")
        if "goal_3x_at_0.9" in row:
            g = row["goal_3x_at_0.9"]
            out.append(f"{'':<23}goal 3× at 0.9: {'met' if g['met'] else 'MISSED'} "
                       f"(best {g['best_strategy']}{'' if g['met'] else ', ' + str(g['missed_by'])})")
    return "\n".join(out)


def plot(runs: list[dict], rows: list[dict], stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"random": "tab:grey", "uncertainty": "tab:blue", "ensemble": "tab:orange", "oracle-kl": "tab:purple"}
    names = [n for n in TARGETS if any(r["target"] == n for r in runs)]
    noises = [z for z in NOISES if any(r["noise"] == z for r in runs)]
    fig, axes = plt.subplots(len(names), len(noises), figsize=(4.2 * len(noises), 3.2 * len(names)),
                             squeeze=False)
    for i, name in enumerate(names):
        for j, noise in enumerate(noises):
            ax = axes[i][j]
            for r in runs:
                if r["target"] == name and r["noise"] == noise:
                    xs = [x["answers"] for x in r["rounds"]]
                    ys = [x["pcc"] for x in r["rounds"]]
                    ax.plot(xs, ys, color=colors[r["strategy"]], lw=1, alpha=0.6,
                            label=r["strategy"] if r["seed"] == min(x["seed"] for x in runs) else None)
            for lv in LEVELS:
                ax.axhline(lv, color="k", lw=0.6, ls="--")
            ax.set_xscale("log")
            ax.set_ylim(0.5, 1.0)
            ax.set_title(f"{name} · {noise}", fontsize=9)
            if i == len(names) - 1:
                ax.set_xlabel("ternary answers")
            if j == 0:
                ax.set_ylabel(r"PCC($\hat\Phi$, $\Phi^*$)")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)

    shown = [s for s in STRATEGIES[1:] + DIAGNOSTICS if any(s in row["strategies"] for row in rows)]
    labels, bars = [], {(s, lv): [] for s in shown for lv in LEVELS}
    bounds: dict[tuple[str, float], list[str]] = {key: [] for key in bars}
    for row in rows:
        labels.append(f"{row['target']}\n{row['noise']}")
        for s in shown:
            for lv in LEVELS:
                r = row["strategies"].get(s, {}).get(f"ratio_{lv}")
                bars[(s, lv)].append(np.nan if not r or r["value"] is None else r["value"])
                bounds[(s, lv)].append("" if not r or r["bound"] == "=" else {">=": "≥", "<=": "≤"}.get(r["bound"], ""))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 4))
    x = np.arange(len(labels))
    width = 0.8 / len(bars)
    for k, (key, vals) in enumerate(bars.items()):
        s, lv = key
        ax.bar(x + (k - (len(bars) - 1) / 2) * width, vals, width, label=f"{s} @ PCC {lv}", color=colors[s],
               alpha=1.0 if lv == 0.9 else 0.5, hatch="" if lv == 0.9 else "//")
        for xi, v, b in zip(x + (k - (len(bars) - 1) / 2) * width, vals, bounds[key]):
            if b and np.isfinite(v):  # a censored side: the bar is a bound
                ax.text(xi, v * 1.05, b, ha="center", fontsize=8)
    ax.axhline(GOAL, color="red", lw=1, ls="--", label="goal 3× at 0.9")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("answers(random) / answers(adaptive)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("Answer savings of adaptive triplets (bounds where a run hit its cap)", fontsize=9)
    fig.tight_layout()
    fig.savefig(stem.parent / f"{stem.name}_ratio.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- agent pool


def pool_run(arm: str, seed: int, level: float, cap: int, llm_flip: float, growth: float) -> dict:
    """Cost to reach ``level`` with people alone, the LLM alone, or both behind an AgentPool.

    "people": an exact oracle at cost 1.0 per answer; "llm": an oracle flipping ``llm_flip`` of its
    answers at cost 0.01 (a simulated stand-in for an LLM, not the LLM agent). Queries come from the
    uncertainty strategy; the learner (sharpness 20) is the same in every arm and weights no agent.
    """
    from fbloop.agents.pool import AgentPool, MemberConfig, PoolConfig

    t = load("p32", seed)
    anchor = SparseBatch(np.zeros((1, 1), np.int64), np.ones((1, 1)), t.p)
    people = OracleAgent(t.factor, anchor, OracleConfig(seed=seed))
    people.name = "people"
    llm = OracleAgent(t.factor, anchor, OracleConfig(noise="flip", flip=llm_flip, seed=seed + 100))
    llm.name = "llm"
    members = {"people": [(people, MemberConfig(cost=1.0, reference=True))],
               "llm": [(llm, MemberConfig(cost=0.01))],
               "pool": [(people, MemberConfig(cost=1.0, reference=True)), (llm, MemberConfig(cost=0.01))]}[arm]
    pool = AgentPool(members, PoolConfig(hard_share=0.2, shared_share=0.05, seed=seed))
    strat = ActiveStrategy(t.p, ActiveConfig(strategy="uncertainty", noise=NoiseModel("flip", flip=llm_flip),
                                             seed=seed))
    learner = GradientLearner(t.p, LearnerConfig(rank=min(t.p, 2 * t.rank), sharpness=20.0, seed=seed, threads=1))
    rng = np.random.default_rng([seed, 9])
    n, goal, factor, rounds = 0, 3 * t.p, None, []
    while True:
        q = strat.next_queries(goal - n, factor, rng, start=n)
        for ans in pool.answer_sets(q):
            ok = ans.ok
            rows = np.searchsorted(q.seq, ans.seq[ok])
            learner.add_triplets(q.a[rows], q.b[rows], q.c[rows], ans.value[ok])
        n = goal
        learner.step(max(100, int(3 * n / 1024)))
        factor = learner.factor()
        pool.factor = factor
        pcc = metrics.pcc_factored(factor, t.factor)
        rounds.append({"queries": n, "pcc": pcc, "cost": pool.report()["total_cost"]})
        if pcc >= level or n >= cap:
            break
        goal = min(cap, int(np.ceil(n * growth)))
    reached = bool(pcc >= level)
    return {"arm": arm, "seed": seed, "level": level, "reached": reached, "queries": n,
            "cost": rounds[-1]["cost"], "rounds": rounds, "pool": pool.report()}


def pool_main(args: argparse.Namespace) -> None:
    level, cap = args.pool_level, 40_000
    rows = []
    jobs = [(arm, seed) for seed in range(args.seeds or 3) for arm in ("people", "llm", "pool")]
    for arm, seed in (tqdm(jobs, desc="pool", unit="run") if tqdm else jobs):
        rows.append(pool_run(arm, seed, level, cap, args.llm_flip, args.growth))
    summary = {}
    for arm in ("people", "llm", "pool"):
        mine = [r for r in rows if r["arm"] == arm]
        summary[arm] = {"reached": sum(r["reached"] for r in mine), "runs": len(mine),
                        "median_cost": float(np.median([r["cost"] if r["reached"] else np.inf for r in mine])),
                        "median_queries": float(np.median([r["queries"] if r["reached"] else np.inf for r in mine]))}
    cheapest_alone = min(summary["people"]["median_cost"], summary["llm"]["median_cost"])
    result = {"target": "p32 (synthetic:p=32,rank=8)", "level": level, "llm_flip": args.llm_flip, "cap": cap,
              "people": "exact oracle, cost 1.0", "llm": f"oracle with {args.llm_flip:.0%} flips, cost 0.01 "
              "(simulated stand-in, not the LLM agent behind the local server)",
              "summary": summary, "pool_cheaper_than_either": bool(summary["pool"]["median_cost"] < cheapest_alone),
              "machine": platform.platform(), "load_average": os.getloadavg(), "runs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "active_pool.json").write_text(json.dumps(result, indent=1))
    print(f"{'arm':<8}{'reached':>9}{'median queries':>16}{'median cost':>13}   (PCC {level}, cap {cap:,} queries)")
    for arm, s in summary.items():
        print(f"{arm:<8}{s['reached']:>5}/{s['runs']:<3}{s['median_queries']:>16,.0f}{s['median_cost']:>13,.2f}")
    print(f"pool cheaper than either agent alone: {result['pool_cheaper_than_either']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="RFM and p = 32, 2 seeds")
    ap.add_argument("--targets", nargs="+", choices=list(TARGETS), help="a subset of the targets")
    ap.add_argument("--noises", nargs="+", choices=list(NOISES), help="a subset of the noise models")
    ap.add_argument("--strategies", nargs="+", choices=list(STRATEGIES + DIAGNOSTICS),
                    default=list(STRATEGIES), help="oracle-kl: a diagnostic that reads Φ* (a ceiling, not a strategy)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 5; --quick 2)")
    ap.add_argument("--growth", type=float, default=2 ** 0.5, help="answer growth per round")
    ap.add_argument("--cap-scale", type=float, default=1.0, help="multiply every target's answer cap")
    ap.add_argument("--resume", action="store_true", help="keep the stored runs of this mode, run the rest")
    ap.add_argument("--replace", action="store_true",
                    help="with --resume: run the selected targets/noises/strategies/seeds again, replacing them")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--pool", action="store_true", help="instead: the agent-pool cost comparison (p = 32)")
    ap.add_argument("--pool-level", type=float, default=0.95, help="--pool: the PCC to reach")
    ap.add_argument("--llm-flip", type=float, default=0.2, help="--pool: the cheap agent's flip rate")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.pool:
        return pool_main(args)
    mode = "quick" if args.quick else "grid"
    names = args.targets or (["rfm", "p32"] if args.quick else list(TARGETS))
    noises = args.noises or list(NOISES)
    seeds = range(args.seeds if args.seeds is not None else (2 if args.quick else 5))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"active_{mode}"
    runs: list[dict] = []
    if args.resume and stem.with_suffix(".json").exists():
        runs = json.loads(stem.with_suffix(".json").read_text())["runs"]
    selected = {(n, z, s, sd) for n in names for z in noises for sd in seeds for s in args.strategies}
    done = {(r["target"], r["noise"], r["strategy"], r["seed"]) for r in runs}
    if args.replace:  # a stored run is dropped only once its replacement is written (after every run)
        done -= selected
    jobs = [(n, z, s, sd) for n in names for z in noises for sd in seeds for s in args.strategies
            if (n, z, s, sd) not in done]
    bar = tqdm(jobs, desc="active", unit="run") if tqdm else jobs
    t0 = time.perf_counter()
    for name, noise, strat, seed in bar:
        if tqdm:
            bar.set_postfix_str(f"{name} {noise} {strat} s{seed}")
        cap = int(TARGETS[name][1] * args.cap_scale)
        r = run_one(name, noise, strat, seed, args.growth, cap=cap)
        r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        runs = [x for x in runs if (x["target"], x["noise"], x["strategy"], x["seed"]) != (name, noise, strat, seed)]
        runs.append(r)
        write(runs, stem, mode, args, time.perf_counter() - t0)  # after every run: a long grid can stop anywhere
    rows = write(runs, stem, mode, args, time.perf_counter() - t0)
    plot(runs, rows, stem)
    print(table(rows))
    print(f"\nwrote {stem}.json, {stem}.png, {stem}_ratio.png; wall {time.perf_counter() - t0:.0f} s, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def write(runs: list[dict], stem: Path, mode: str, args: argparse.Namespace, wall: float) -> list[dict]:
    rows = summarise(runs)
    missing = [f"{n}/{z}/{s}/seed{sd}" for n in TARGETS for z in NOISES for s in STRATEGIES
               for sd in range(5) if not any((r["target"], r["noise"], r["strategy"], r["seed"]) == (n, z, s, sd)
                                            for r in runs)]
    result = {
        "mode": mode, "goal": f"≥ {GOAL:.0f}× fewer answers than random at PCC 0.9",
        "levels": list(LEVELS), "growth": args.growth, "cap_scale": args.cap_scale,
        "holdout": "each adaptive batch mixes in random_share uniformly random queries: the unbiased hold-out",
        "machine": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
        "wall_s_this_invocation": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "summary": rows, "not_run_of_full_grid": missing, "runs": runs,
    }
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    return rows


if __name__ == "__main__":
    main()
