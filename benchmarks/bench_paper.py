"""The paper's SAE-scale experiments (Figures 3 and 5), end to end through fbloop's loop.

Each case is one :func:`fbloop.loop.run_loop` call — design → oracle → SQLite on
disk → learner → PCC — in a child process of its own, so the wall time and the
peak memory (the child's ``VmHWM``: resident set high-water mark) are that
case's alone. The learner is whatever ``--learner auto`` picks, and the results
say which: ``direct`` (entry-by-entry solve + PSD projection) for the sparse
constructive and eigendecomposition designs, ``gradient`` (Algorithm 3 on
``Φ̂ = U Uᵀ``, rank 512) for 3-sparse sampling.

    python benchmarks/bench_paper.py --figure 3                 # ChessGPT shape (p = 4096, d = 512)
    python benchmarks/bench_paper.py --figure 5                 # Pythia shape (p = 32768, d = 512, rank 215)
    python benchmarks/bench_paper.py --figure 3 --cases constructive,eigen
    python benchmarks/bench_paper.py --figure sae --target saelens:DIR   # a dictionary fbloop trained itself
    python benchmarks/bench_paper.py --quick                    # shrunken shapes, a smoke run (temporary folder)
    python benchmarks/bench_paper.py --figure 3 --device cuda   # the gradient learner on a GPU

Results accumulate in ``benchmarks/results/paper_fig{3,5,sae}.json`` (a case run
again replaces its row) with a plot ``paper_fig*.png``: PCC against answers, the
paper's points beside fbloop's. Every row names its target PCC (the issue's) and
the paper's, and says whether the target was met and by how much it was missed.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see bench_learner.py

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent

# (case, design, budget, paper PCC, target PCC); budgets and PCCs from PAPER.md.
FIGURES: dict[str, dict] = {
    "3": {"target": "chessgpt", "shape": "ChessGPT SAE shape, p = 4096, d = 512 (rank 512)", "cases": [
        ("eigen", "eigen", 134_912, 0.9427, 0.99),
        ("constructive", "constructive", 8_390_656, 0.9773, 0.999),
        ("sparse-1M", "sparse", 1_000_000, 0.7152, None),
        ("sparse-2M", "sparse", 2_000_000, 0.8256, None),
        ("sparse-4M", "sparse", 4_000_000, 0.9625, 0.99),
        ("sparse-10M", "sparse", 10_000_000, 0.9741, None),
        # Supports that cover the coordinates evenly (the coverage design), against the paper's sampling:
        ("coverage-1M", "coverage", 1_000_000, 0.7152, None),
        ("coverage-2M", "coverage", 2_000_000, 0.8256, None),
        ("coverage-4M", "coverage", 4_000_000, 0.9625, 0.99),
        # Adaptive supports (the pivot design, fbloop.queries.pivots), against the paper's 3-sparse sampling:
        ("pivot-1M", "pivot", 1_000_000, 0.7152, None),
        ("pivot-2M", "pivot", 2_000_000, 0.8256, None),
        ("pivot-4M", "pivot", 4_000_000, 0.9625, None),
    ]},
    "5": {"target": "pythia", "shape": "Pythia-70M SAE shape, p = 32768, d = 512, rank 215", "cases": [
        ("sparse-0.2M", "sparse", 200_000, 0.024, None),
        ("sparse-2M", "sparse", 2_000_000, 0.38, None),
        ("sparse-5M", "sparse", 5_000_000, 0.54, None),
        ("sparse-10M", "sparse", 10_000_000, 0.65, None),
        ("sparse-20M", "sparse", 20_000_000, 0.77, 0.95),
        ("coverage-2M", "coverage", 2_000_000, 0.38, None),
        ("coverage-5M", "coverage", 5_000_000, 0.54, None),
        ("coverage-10M", "coverage", 10_000_000, 0.65, None),
        # Adaptive supports (the pivot design, fbloop.queries.pivots), against the paper's 3-sparse sampling:
        ("pivot-2M", "pivot", 2_000_000, 0.38, None),
        ("pivot-5M", "pivot", 5_000_000, 0.54, None),
        ("pivot-10M", "pivot", 10_000_000, 0.65, None),
    ]},
    "sae": {"target": None, "shape": "a dictionary fbloop trained on MiniLM activations (fbloop sae)", "cases": [
        ("eigen", "eigen", None, None, 0.99),
        ("constructive", "constructive", None, None, 0.999),
        ("sparse-1P", "sparse", "1P", None, None),
        ("sparse-2P", "sparse", "2P", None, None),
    ]},
}
QUICK_TARGET = "chessgpt:p=512,rank=64,d=64"  # the ChessGPT proportions (rank = p/8), 64× fewer entries


def child(spec: dict) -> dict:
    """Run one case in this process; returns its result row."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from fbloop.queries.designs import DesignConfig, n_params
    from fbloop.learners import LearnerConfig, factor_rank
    from fbloop.loop import RunConfig, run_loop
    from fbloop.store import Store
    from fbloop.targets.load import load_target

    torch.set_num_threads(spec["threads"])
    t0 = time.perf_counter()
    target = load_target(spec["target"])
    budget = spec["budget"]
    if isinstance(budget, str):  # "2P": multiples of P = p(p+1)/2
        budget = int(float(budget[:-1]) * n_params(target.p))
    cfg = RunConfig(target=spec["target"], design=DesignConfig(name=spec["design"], mu=0.9, s=3),
                    budget=budget, learner="auto", rfm_mse=False, seed=spec["seed"],
                    learner_config=LearnerConfig(device=spec["device"], seed=spec["seed"],
                                                 final_epochs=spec["final_epochs"], rank=spec.get("rank"),
                                                 final_batch=spec.get("final_batch", 4096)))
    bar = tqdm(total=None, desc=f"{spec['figure']}/{spec['case']}", unit="ans", file=sys.stderr,
               dynamic_ncols=True, mininterval=2.0)

    fitting = [False]

    def progress(ev) -> None:
        if ev.fit is not None:
            if not fitting[0]:
                fitting[0] = True
                bar.reset(total=ev.fit[1])
                bar.unit = "step"
            bar.update(ev.fit[0] - bar.n)
        else:
            bar.total = ev.budget
            bar.update(ev.answers - bar.n)
        bar.set_postfix({"pcc": f"{ev.pcc:.4f}" if ev.pcc is not None else "—"}, refresh=False)

    with tempfile.TemporaryDirectory(dir=spec.get("tmp")) as tmp:
        db = Path(tmp) / "bench.db"
        with Store(db) as store:
            t1 = time.perf_counter()
            result = run_loop(cfg, store, progress=progress, target=target)
            loop_s = time.perf_counter() - t1
            curve = [(s["answers"], s["pcc"], s["elapsed_s"]) for s in store.snapshots(result.run_id)
                     if s["pcc"] is not None]
        db_mib = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 2**20
    bar.close()
    peak = next((int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                 if line.startswith("VmHWM")), 0) / 1024
    row = {k: spec.get(k) for k in ("figure", "case", "target", "design", "device", "threads", "seed", "final_epochs",
                                    "final_batch")}
    row.update({"budget": budget, "p": target.p, "rank": target.rank, "learner": result.learner,
                "learner_rank": factor_rank(target.p, spec.get("rank")),
                "answers": result.answers, "pcc": float(np.round(result.pcc, 7)),
                **({"pivot": {**result.extra["design"], **result.extra["pivot"]}} if "pivot" in result.extra else {}),
                "run_loop_s": round(loop_s, 1), "wall_s": round(time.perf_counter() - t0, 1),
                "peak_rss_mib": round(peak), "db_mib": round(db_mib), "curve": curve})
    if spec["device"].startswith("cuda"):
        row["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        row["gpu"] = torch.cuda.get_device_name()
    return row


def run_case(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE,
                          text=True)
    if proc.returncode != 0:
        return {**spec, "error": f"child exited {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def row_key(row: dict) -> tuple:
    """A case run again replaces its row; a run at a non-default learner rank or number of final epochs
    gets a row of its own."""
    from fbloop.learners import LearnerConfig, factor_rank

    rank = row.get("learner_rank")
    default = factor_rank(row["p"], None) if "p" in row else None
    epochs = row.get("final_epochs")
    return (row["case"], row.get("device", "cpu"), None if rank in (None, default) else rank,
            None if epochs in (None, LearnerConfig.final_epochs) else epochs)


def is_default_learner(row: dict) -> bool:
    return row_key(row)[2:] == (None, None)


def judge(row: dict, paper: float | None, goal: float | None) -> dict:
    row["paper_pcc"], row["target_pcc"] = paper, goal
    if goal is not None and "pcc" in row:
        row["met"] = row["pcc"] >= goal
        row["miss_by"] = None if row["met"] else round(goal - row["pcc"], 6)
    return row


def plot(rows: list[dict], info: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    groups: dict[tuple, list[dict]] = {}  # 3-sparse sampling runs by learner setting (rank, final epochs)
    for r in rows:
        if r.get("design") == "sparse" and "pcc" in r:
            groups.setdefault(row_key(r)[2:], []).append(r)
    others = iter(["tab:orange", "tab:red", "tab:brown", "tab:pink"])
    for key, runs in sorted(groups.items(), key=lambda kv: kv[0] != (None, None)):
        runs.sort(key=lambda r: r["answers"])
        xs, ys = [r["answers"] for r in runs], [r["pcc"] for r in runs]
        if key == (None, None):
            for r in runs:  # the learner's PCC as the answers of each run streamed in
                ax.plot([c[0] for c in r["curve"]], [c[1] for c in r["curve"]], color="tab:blue", alpha=0.25, lw=1)
            ax.plot(xs, ys, "o-", color="tab:blue", label="fbloop, 3-sparse sampling (final PCC; faint: during the run)")
        else:
            ax.plot(xs, ys, "*-", color=next(others, "tab:olive"), ms=11,
                    label=f"fbloop, 3-sparse sampling, U of rank {runs[0]['learner_rank']}, "
                          f"{runs[0].get('final_epochs'):g} final epochs")
    ran = {r.get("budget") for r in rows if r.get("design") == "sparse"}
    paper = sorted((budget, pcc) for _, design, budget, pcc, _ in info["cases"]
                   if design == "sparse" and pcc is not None and budget in ran)
    if paper:
        ax.plot(*zip(*paper), "s--", color="tab:gray", label="paper, 3-sparse sampling")
    cover = sorted((r for r in rows if r.get("design") == "coverage" and "pcc" in r), key=lambda r: r["answers"])
    if cover:
        ax.plot([r["answers"] for r in cover], [r["pcc"] for r in cover], "o-", color="tab:purple",
                label="fbloop, 3-sparse, supports covering the coordinates evenly")
    pivot = sorted((r for r in rows if r.get("design") == "pivot" and "pcc" in r), key=lambda r: r["answers"])
    if pivot:
        ax.plot([c[0] for c in pivot[-1]["curve"]], [c[1] for c in pivot[-1]["curve"]], color="tab:cyan", alpha=0.5,
                lw=1)
        ax.plot([r["answers"] for r in pivot], [r["pcc"] for r in pivot], "P-", color="tab:cyan", ms=9,
                label="fbloop, adaptive supports (pivot design, Nyström; faint: during the longest run)")
    marks = {"constructive": "^", "eigen": "D"}
    for r in rows:
        if r.get("design") in marks and "pcc" in r:
            ax.plot(r["answers"], r["pcc"], marks[r["design"]], color="tab:green", ms=9,
                    label=f"fbloop, {r['design']} ({r['learner']})")
            if r.get("paper_pcc") is not None:
                ax.plot(r["answers"], r["paper_pcc"], marks[r["design"]], color="tab:gray", ms=9, mfc="none",
                        label=f"paper, {r['design']}")
    for r in rows:
        if r.get("target_pcc") is not None:
            ax.hlines(r["target_pcc"], r["answers"] / 1.5, r["answers"] * 1.5, colors="tab:red", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("answers (equality pairs)")
    ax.set_ylabel("PCC(Φ̂, Φ*)")
    ax.set_ylim(min([0.0] + [r.get("pcc", 0) for r in rows]), 1.02)
    ax.set_title(f"{info['shape']} — red ticks: targets", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    from fbloop.learners import LearnerConfig  # its defaults are the benchmark's

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--figure", choices=list(FIGURES), default="3")
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all of the figure's)")
    ap.add_argument("--target", default=None, help="target spec (required for --figure sae)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--final-epochs", type=float, default=LearnerConfig.final_epochs,
                    help="gradient learner: final passes over the answers")
    ap.add_argument("--final-batch", type=int, default=4096, help="gradient learner: pairs per step of the final fit")
    ap.add_argument("--rank", type=int, default=None, help="gradient learner: columns of U (default min(p, 512))")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help=f"smoke run on {QUICK_TARGET}, budgets scaled down 64×")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    info = FIGURES[args.figure]
    target = args.target or info["target"]
    if target is None:
        raise SystemExit("--figure sae needs --target (e.g. saelens:PATH, made by `fbloop sae`)")
    if args.quick:
        target = QUICK_TARGET
        args.out = args.out or Path(tempfile.gettempdir()) / "fbloop-bench"
    out_dir = args.out or ROOT / "results"
    wanted = set(args.cases.split(",")) if args.cases else None
    cases = [c for c in info["cases"] if wanted is None or c[0] in wanted]
    if wanted and len(cases) != len(wanted):
        raise SystemExit(f"unknown case(s) {sorted(wanted - {c[0] for c in info['cases']})}; "
                         f"expect {[c[0] for c in info['cases']]}")
    path = out_dir / f"paper_fig{args.figure}.json"
    old = json.loads(path.read_text()) if path.exists() else {"rows": []}
    rows = {row_key(r): r for r in old["rows"]}
    def save() -> None:  # after every case: a long grid cut short keeps what it measured
        out = {"benchmark": f"paper_fig{args.figure}", "shape": info["shape"], "target": target,
               "quick": args.quick,
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "python": platform.python_version(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                           "loadavg": [round(x, 2) for x in os.getloadavg()]},
               "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": list(rows.values())}
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n")
        plot([r for r in rows.values() if r.get("device", "cpu") == args.device], info, path.with_suffix(".png"))

    for case, design, budget, paper, goal in cases:
        if args.quick and isinstance(budget, int):
            budget = max(1000, budget // 64) if design in ("sparse", "coverage", "pivot") else None
        spec = {"figure": args.figure, "case": case, "target": target, "design": design, "budget": budget,
                "device": args.device, "threads": args.threads, "seed": args.seed,
                "final_epochs": args.final_epochs, "final_batch": args.final_batch, "rank": args.rank}
        row = judge(run_case(spec), paper, goal)
        rows[row_key(row)] = row
        verdict = "" if row.get("target_pcc") is None else \
            (" — target met" if row.get("met") else f" — MISSES target {goal} by {row.get('miss_by')}")
        print(f"{case:<14} {row.get('answers', '?'):>11,} answers  PCC {row.get('pcc', float('nan')):.6f} "
              f"(paper {paper if paper is not None else '—'})  learner {row.get('learner', '?')}  "
              f"{row.get('wall_s', '?')} s  peak {row.get('peak_rss_mib', '?')} MiB  db {row.get('db_mib', '?')} MiB"
              f"{verdict}{'  ERROR ' + row['error'] if 'error' in row else ''}", flush=True)
        save()
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
