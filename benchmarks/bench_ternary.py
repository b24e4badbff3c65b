"""PCC against the number of ternary answers, for fbloop's two ternary routes.

(a) the ternary learner: random Gaussian triplets answered +1/−1 by a
    noise-free oracle, learned as a run learns them (``add_triplets``, the
    chunk's steps, ``finish``) at the default settings — U of the default rank
    min(p, 512), cut at Φ̂'s eigengap — and with U of the true rank;
(b) bisection: the paper's designs asked as triplets (0, u, t·y), each pair's
    scale bisected to precision ε, then the usual pair learner;
(c) metric-learn's SCML, the standard Mahalanobis-from-triplets learner, on the
    same triplets. metric-learn 0.7.0 fails with scikit-learn ≥ 1.8 (fbloop's
    environment), so it runs in a subprocess of another interpreter:

        python -m venv .venv-scml
        .venv-scml/bin/pip install metric-learn==0.7.0 scikit-learn==1.5.2 "numpy<2.1"
        python benchmarks/bench_ternary.py --scml-python .venv-scml/bin/python

    Without ``--scml-python`` it is imported here when it can be; otherwise the
    results file says why it did not run.

    python benchmarks/bench_ternary.py                       # everything, ~25 min on 2 cores
    python benchmarks/bench_ternary.py --routes learner,scml # some routes; the others' rows are kept
    python benchmarks/bench_ternary.py --quick               # a smoke run

Writes benchmarks/results/ternary_routes.json and ternary_routes.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fbloop import metrics, targets
from fbloop.agents import OracleAgent
from fbloop.agents.bisection import BisectionAgent, BisectionConfig, triplets_used
from fbloop.learners import GradientLearner, LearnerConfig
from fbloop.queries.catalogue import make_design
from fbloop.queries.designs import DesignConfig

OUT = Path(__file__).parent / "results"
TARGETS = {"rfm": "rfm", "p10r4": "synthetic:p=10,rank=4", "p32r8": "synthetic:p=32,rank=8"}


def gaussian_triplets(spec: str, n: int, seed: int):
    """Target, queries and noise-free answers: the task of route (a) and (c)."""
    t = targets.load_target(spec if spec == "rfm" else f"{spec},seed={seed}")
    d = make_design(DesignConfig(name="triplet", dist="gaussian"), t, seed)
    q = d.queries(0, n)
    return t, q, OracleAgent(t.factor, d.anchor()).answer(q).value


def ternary_route(spec: str, n: int, rank: int | None, seed: int) -> dict:
    t, q, ans = gaussian_triplets(spec, n, seed)
    cfg = LearnerConfig(rank=rank, seed=seed)
    learner = GradientLearner(t.p, cfg, None)
    t0 = time.perf_counter()
    learner.add_triplets(q.a, q.b, q.c, ans)
    learner.step(cfg.steps_per_chunk)
    learner.finish()
    return {"route": "ternary learner", "rank": "default" if rank is None else rank, "rank_found": learner.rank,
            "answers": n, "pcc": metrics.pcc_factored(learner.factor(), t.factor),
            "seconds": time.perf_counter() - t0, "seed": seed}


def bisection_route(spec: str, design: str, eps: float, seed: int) -> dict:
    t = targets.load_target(spec if spec == "rfm" else f"{spec},seed={seed}")
    d = make_design(DesignConfig(name=design), t, seed)
    q = d.queries(0, d.count)
    oracle = OracleAgent(d.design_factor(t.factor), d.anchor())  # Φ* in the design's coordinates (eigen: its basis)
    got = BisectionAgent(oracle, d.anchor(), BisectionConfig(precision=eps)).answer(q)
    learner = GradientLearner(t.p, LearnerConfig(seed=seed), d.anchor())
    ok = got.ok
    learner.add_pairs(q.a[ok], got.value[ok])
    t0 = time.perf_counter()
    learner.finish()
    return {"route": f"bisection/{design}", "precision": eps, "pairs": int(ok.sum()),
            "answers": triplets_used(got), "pcc": metrics.pcc_factored(d.native_factor(learner.factor()), t.factor),
            "seconds": time.perf_counter() - t0, "seed": seed}


SCML_FIT = """
import sys, time, numpy as np
from metric_learn import SCML
import metric_learn, sklearn
data = np.load(sys.argv[1])
t0 = time.perf_counter()
model = SCML(random_state=int(data["seed"])).fit(data["triplets"])
np.savez(sys.argv[2], L=model.components_, seconds=time.perf_counter() - t0,
         versions=np.array([metric_learn.__version__, sklearn.__version__]))
"""


def scml_route(spec: str, n: int, seed: int, python: str | None) -> dict:
    """SCML on route (a)'s triplets, ordered (anchor, closer, farther); in ``python`` when given."""
    t, q, ans = gaussian_triplets(spec, n, seed)
    keep = ans != 0
    a, b, c = (x.to_dense()[keep] for x in (q.a, q.b, q.c))
    near = np.where(ans[keep, None] > 0, b, c)
    far = np.where(ans[keep, None] > 0, c, b)
    triplets = np.stack([a, near, far], axis=1)  # (n, 3, p)
    row = {"route": "SCML", "answers": n, "seed": seed}
    try:
        if python:
            with tempfile.TemporaryDirectory() as tmp:
                np.savez(f"{tmp}/in.npz", triplets=triplets, seed=seed)
                done = subprocess.run([python, "-c", SCML_FIT, f"{tmp}/in.npz", f"{tmp}/out.npz"],
                                      capture_output=True, text=True, timeout=3600)
                if done.returncode:
                    return {**row, "unavailable": f"{python} failed: {done.stderr.strip()[-300:]}"}
                out = np.load(f"{tmp}/out.npz")
                L, seconds, versions = out["L"], float(out["seconds"]), [str(v) for v in out["versions"]]
        else:
            import metric_learn
            import sklearn
            from metric_learn import SCML

            t0 = time.perf_counter()
            L = SCML(random_state=seed).fit(triplets).components_
            seconds, versions = time.perf_counter() - t0, [metric_learn.__version__, sklearn.__version__]
    except Exception as exc:  # not installed, or broken against this scikit-learn
        return {**row, "unavailable": f"{type(exc).__name__}: {exc}"[:300]}
    return {**row, "pcc": metrics.pcc(L.T @ L, t.phi()), "seconds": seconds,
            "metric_learn": versions[0], "scikit_learn": versions[1]}


FAMILY = {"ternary learner": "learner", "SCML": "scml"}  # route → --routes name; the rest are "bisection"


def family(row: dict) -> str:
    return FAMILY.get(row["route"], "bisection")


def plot(rows: list[dict], path: Path) -> None:
    """PCC against ternary answers per target: the full range (SCML included) above, the top 1% below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def label(r: dict) -> str:
        if r["route"] != "ternary learner":
            return r["route"]
        return "ternary learner (default rank)" if r["rank"] == "default" else "ternary learner (true rank)"

    names = list(TARGETS)
    labels = sorted({label(r) for r in rows if "pcc" in r})
    color = {k: f"C{i}" for i, k in enumerate(labels)}  # one colour per route on every panel
    fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 7), sharey="row", squeeze=False)
    for col, name in enumerate(names):
        sub = [r for r in rows if r["target"] == name and "pcc" in r]
        for route in sorted({label(r) for r in sub}):
            by_n: dict[int, list[float]] = {}
            for r in sub:
                if label(r) == route:
                    by_n.setdefault(r["answers"], []).append(r["pcc"])
            xs = sorted(by_n)
            mean = np.array([np.mean(by_n[x]) for x in xs])
            err = np.array([[mean[i] - min(by_n[x]), max(by_n[x]) - mean[i]] for i, x in enumerate(xs)]).T
            style = {"marker": "x", "ls": ":"} if route == "SCML" else {"marker": "o"}
            style["color"] = color[route]
            label_ = route
            for ax in axes[:, col]:
                ax.errorbar(xs, mean, yerr=err, capsize=2, label=label_, **style)
        for ax in axes[:, col]:
            ax.set_xscale("log")
            ax.axhline(0.998, color="grey", lw=0.8, ls="--")
        axes[0, col].set_title(name)
        axes[0, col].set_ylim(0.0, 1.02)
        axes[1, col].set_ylim(0.99, 1.0003)
        axes[1, col].set_xlabel("ternary answers")
    for ax in axes[:, 0]:
        ax.set_ylabel("PCC(Φ̂, Φ*)")
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_legend_handles_labels()[0]}
    axes[0, -1].legend([handles[k] for k in labels if k in handles], [k for k in labels if k in handles],
                       fontsize=7, loc="lower right")
    fig.suptitle("noise-free ternary answers; mean over seeds, bars min–max; dashed: 0.998")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--routes", default="learner,bisection,scml",
                    help="comma-separated: learner, bisection, scml; rows of the others are kept from the file")
    ap.add_argument("--scml-python", default=None, metavar="PATH",
                    help="an interpreter with metric-learn 0.7.0 and scikit-learn < 1.8 to run SCML in")
    args = ap.parse_args()
    torch.set_num_threads(1)
    routes = set(args.routes.split(","))
    seeds = range(1 if args.quick else args.seeds)
    grid_a = {"p10r4": [250, 500, 1000, 2000], "p32r8": [1000, 2500, 5000], "rfm": [250, 500, 1000]}
    grid_c = {"p10r4": [250, 1000, 2000], "p32r8": [1000, 5000]}
    if args.quick:
        grid_a, grid_c = {"p10r4": [250, 1000], "p32r8": [1000], "rfm": [250]}, {"p10r4": [250]}
    precisions = [1e-1, 1e-2, 1e-3] if not args.quick else [1e-2]
    jobs = []
    for name, spec in TARGETS.items():
        p_true = targets.load_target(spec if spec == "rfm" else f"{spec},seed=0")
        for seed in seeds:
            for n in grid_a[name] if "learner" in routes else []:
                for rank in (None, p_true.rank):
                    jobs.append((name, lambda s=spec, n=n, r=rank, sd=seed: ternary_route(s, n, r, sd)))
            for design in ("eigen", "constructive", "gaussian") if "bisection" in routes else ():
                for eps in precisions:
                    jobs.append((name, lambda s=spec, d=design, e=eps, sd=seed: bisection_route(s, d, e, sd)))
            for n in grid_c.get(name, []) if "scml" in routes else []:
                jobs.append((name, lambda s=spec, n=n, sd=seed: scml_route(s, n, sd, args.scml_python)))
    path = OUT / "ternary_routes.json"
    kept = [r for r in json.loads(path.read_text())["rows"] if family(r) not in routes] if path.exists() else []
    rows = []
    for name, job in tqdm(jobs, desc="ternary routes", unit="fit"):
        rows.append({"target": name, **job()})
    rows = kept + rows
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"machine": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "rows": rows}
    path.write_text(json.dumps(result, indent=1))
    plot(rows, OUT / "ternary_routes.png")
    print(f"{'target':<7}{'route':<26}{'rank/eps':>9}{'answers':>9}{'seed':>5}{'PCC':>10}{'s':>8}")
    for r in rows:
        extra = r.get("rank", r.get("precision", ""))
        pcc = f"{r['pcc']:>10.5f}" if "pcc" in r else f"  {r.get('unavailable', '')}"
        print(f"{r['target']:<7}{r['route']:<26}{extra!s:>9}{r['answers']:>9}{r['seed']:>5}{pcc}"
              f"{r.get('seconds', float('nan')):>8.1f}")
    print(f"wrote {path} and ternary_routes.png")


if __name__ == "__main__":
    main()
