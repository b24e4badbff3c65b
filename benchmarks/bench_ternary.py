"""PCC against the number of ternary answers, for fbloop's two ternary routes.

(a) the ternary learner: random Gaussian triplets answered +1/−1 by a
    noise-free oracle, learned with the logistic margin loss on Φ̂ = U Uᵀ
    (U of the true rank, the user's choice; and of the default rank min(p, 512));
(b) bisection: the paper's designs asked as triplets (0, u, t·y), each pair's
    scale bisected to precision ε, then the usual pair learner.

For scale, metric-learn's SCML is run on the same triplets where it can be
installed (metric-learn 0.7.0 fails with scikit-learn ≥ 1.8); otherwise the
results file says so.

    python benchmarks/bench_ternary.py            # full grid, ~10 min on 2 cores
    python benchmarks/bench_ternary.py --quick    # a smoke run

Writes benchmarks/results/ternary_routes.json and ternary_routes.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fbloop import metrics, targets
from fbloop.agents import OracleAgent
from fbloop.bisection import BisectionAgent, BisectionConfig, triplets_used
from fbloop.designs import DesignConfig, make_design
from fbloop.learner import GradientLearner, LearnerConfig

OUT = Path(__file__).parent / "results"
TARGETS = {"rfm": "rfm", "p10r4": "synthetic:p=10,rank=4", "p32r8": "synthetic:p=32,rank=8"}


def ternary_route(spec: str, n: int, rank: int | None, seed: int, steps: int) -> dict:
    t = targets.load_target(spec if spec == "rfm" else f"{spec},seed={seed}")
    d = make_design(DesignConfig(name="triplet", dist="gaussian"), t, seed)
    q = d.queries(0, n)
    ans = OracleAgent(t.factor, d.anchor()).answer(q).value
    learner = GradientLearner(t.p, LearnerConfig(rank=rank, batch_size=max(n, 1024), seed=seed), None)
    learner.add_triplets(q.a, q.b, q.c, ans)
    t0 = time.perf_counter()
    learner.step(steps)
    return {"route": "ternary learner", "rank": rank or min(t.p, 512), "answers": n,
            "pcc": metrics.pcc_factored(learner.factor(), t.factor), "seconds": time.perf_counter() - t0,
            "seed": seed}


def bisection_route(spec: str, design: str, eps: float, seed: int) -> dict:
    t = targets.load_target(spec if spec == "rfm" else f"{spec},seed={seed}")
    d = make_design(DesignConfig(name=design), t, seed)
    q = d.queries(0, d.count)
    got = BisectionAgent(OracleAgent(t.factor, d.anchor()), d.anchor(), BisectionConfig(precision=eps)).answer(q)
    learner = GradientLearner(t.p, LearnerConfig(seed=seed), d.anchor())
    ok = got.ok
    learner.add_pairs(q.a[ok], got.value[ok])
    t0 = time.perf_counter()
    learner.finish()
    return {"route": f"bisection/{design}", "precision": eps, "pairs": int(ok.sum()),
            "answers": triplets_used(got), "pcc": metrics.pcc_factored(learner.factor(), t.factor),
            "seconds": time.perf_counter() - t0, "seed": seed}


def scml_route(spec: str, n: int, seed: int) -> dict | None:
    try:
        from metric_learn import SCML
    except Exception as exc:  # not installed, or broken against this scikit-learn
        return {"route": "SCML", "unavailable": f"{type(exc).__name__}: {exc}"[:200]}
    t = targets.load_target(f"{spec},seed={seed}")
    d = make_design(DesignConfig(name="triplet", dist="gaussian"), t, seed)
    q = d.queries(0, n)
    ans = OracleAgent(t.factor, d.anchor()).answer(q).value
    a, b, c = q.a.to_dense(), q.b.to_dense(), q.c.to_dense()
    near, far = np.where(ans[:, None] > 0, b, c), np.where(ans[:, None] > 0, c, b)
    try:
        model = SCML(random_state=seed).fit(np.stack([a, near, far], axis=1))
        L = model.components_
        return {"route": "SCML", "answers": n, "pcc": metrics.pcc(L.T @ L, t.phi()), "seed": seed}
    except Exception as exc:
        return {"route": "SCML", "unavailable": f"{type(exc).__name__}: {exc}"[:200]}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(TARGETS)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), sharey=True)
    for ax, name in zip(axes, names):
        sub = [r for r in rows if r["target"] == name and "pcc" in r]
        for route in sorted({(r["route"], r.get("rank")) for r in sub}, key=str):
            pts = sorted((r["answers"], r["pcc"]) for r in sub if (r["route"], r.get("rank")) == route)
            xs, ys = zip(*pts)
            label = route[0] + (f" (rank {route[1]})" if route[1] else "")
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_title(name)
        ax.set_xlabel("ternary answers")
        ax.axhline(0.998, color="grey", lw=0.8, ls="--")
        ax.set_ylim(0.9, 1.0005)
    axes[0].set_ylabel("PCC(Φ̂, Φ*)")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1200, help="Adam steps for the ternary learner")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = range(1 if args.quick else args.seeds)
    grid_a = {"p10r4": [250, 500, 1000, 2000], "p32r8": [1000, 2500, 5000, 10000], "rfm": [250, 500, 1000]}
    if args.quick:
        grid_a = {"p10r4": [250, 1000], "p32r8": [1000], "rfm": [250]}
    precisions = [1e-1, 1e-2, 1e-3] if not args.quick else [1e-2]
    jobs = []
    for name, spec in TARGETS.items():
        p_true = targets.load_target(spec if spec == "rfm" else f"{spec},seed=0")
        for seed in seeds:
            for n in grid_a[name]:
                for rank in (p_true.rank, None):
                    jobs.append((name, lambda s=spec, n=n, r=rank, sd=seed: ternary_route(s, n, r, sd, args.steps)))
            for design in ("eigen", "constructive", "gaussian"):
                for eps in precisions:
                    jobs.append((name, lambda s=spec, d=design, e=eps, sd=seed: bisection_route(s, d, e, sd)))
    rows = []
    for name, job in tqdm(jobs, desc="ternary routes", unit="fit"):
        rows.append({"target": name, **job()})
    scml = [scml_route(TARGETS[n], k, 0) for n, k in (("p10r4", 1000), ("p32r8", 5000))]
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"machine": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "rows": rows, "scml": scml}
    (OUT / "ternary_routes.json").write_text(json.dumps(result, indent=1))
    plot(rows, OUT / "ternary_routes.png")
    print(f"{'target':<7}{'route':<26}{'rank/eps':>9}{'answers':>9}{'PCC':>10}")
    for r in rows:
        extra = r.get("rank", r.get("precision"))
        print(f"{r['target']:<7}{r['route']:<26}{extra!s:>9}{r['answers']:>9}{r['pcc']:>10.5f}")
    for s in scml:
        print("SCML:", s)
    print(f"wrote {OUT / 'ternary_routes.json'} and ternary_routes.png")


if __name__ == "__main__":
    main()
