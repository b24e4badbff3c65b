"""Noise-aware learning from an LLM's order swaps: PCC with each source fitted at its estimated flip rate
against every answer taken as exact.

Each cell is a real ``run_loop`` with the LLM agent (the ``openai`` client over HTTP, batches of 8,
4 requests in flight, ``--order-swap``) against the local OpenAI-compatible server, whose oracle answers
``synthetic:p=32,rank=8`` with one kind of error:

- ``flip-0.2``: 20 % of its answers flipped;
- ``first-0.3``: "first" 30 % of the time whatever the order (a position bias);
- ``logistic-T0.3``: logistic noise on the relative margin at temperature 0.3 (errs on close calls).

Both arms of a seed ask the same triplets and get the same replies (the server's draws are a pure function
of the prompt); they differ only in ``noise_aware``. The figure is the final PCC and, for the aware arm,
the flip rate read from the order swaps (``fbloop.agents.reliability``), with the true error rate of one asking,
measured against the noise-free oracle on the same answers.

    python benchmarks/bench_reliability.py            # 3 noises × 2 seeds × 2 arms, ~10 min on 2 cores
    python benchmarks/bench_reliability.py --quick    # one noise, one seed, 600 answers

Writes benchmarks/results/reliability.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from fbloop.agents import LLMConfig, OracleAgent, OracleConfig
from fbloop.agents.server import ServerConfig, serve
from fbloop.learners import LearnerConfig
from fbloop.loop import RunConfig, run_loop
from fbloop.queries.designs import DesignConfig
from fbloop.store import Store
from fbloop.targets.load import load_target

try:
    from tqdm import tqdm
except ImportError:  # the bar is a nicety
    tqdm = None

OUT = Path(__file__).parent / "results"
TARGET = "synthetic:p=32,rank=8"
NOISES = {
    "flip-0.2": (OracleConfig(noise="flip", flip=0.2), 0.0),
    "first-0.3": (OracleConfig(), 0.3),
    "logistic-T0.3": (OracleConfig(noise="logistic", temperature=0.3), 0.0),
}


def true_error(store: Store, run_id: str, name: str, target) -> float:
    """Share of ``name``'s ok answers that differ from the noise-free oracle's."""
    oracle = OracleAgent(target.factor, None)
    wrong = n = 0
    for queries, answers in store.iter_answered(run_id, agent=name):
        truth = oracle.answer(queries).value
        wrong += int(np.sum(truth != answers.value))
        n += len(answers)
    return wrong / n if n else float("nan")


def cell(noise: str, seed: int, budget: int, folder: Path, target) -> list[dict]:
    oracle, bias = NOISES[noise]
    rows = []
    with serve(ServerConfig(target=TARGET, oracle=oracle, first_bias=bias), target=target) as srv, \
            Store(folder / f"{noise}-{seed}.db") as store:
        for aware in (None, False):
            cfg = RunConfig(target=TARGET, design=DesignConfig(name="triplet"), agent="llm", budget=budget,
                            seed=seed, llm=LLMConfig(base_url=srv.url, order_swap=True, batch_size=8, concurrency=4),
                            learner_config=LearnerConfig(rank=16, seed=seed), noise_aware=aware, rfm_mse=False)
            t0 = time.perf_counter()
            run_id = "aware" if aware is None else "exact"
            result = run_loop(cfg, store, run_id=run_id)
            eps = result.extra.get("source_noise") or {}
            rows.append({"noise": noise, "seed": seed, "arm": run_id, "answers": result.answers, "pcc": result.pcc,
                         "fitted_flip_rate": next(iter(eps.values()), None) if aware is None else None,
                         "true_error": true_error(store, run_id, "llm:fbloop-oracle", target),
                         "seconds": time.perf_counter() - t0})
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noises = list(dict.fromkeys(r["noise"] for r in rows))
    fig, ax = plt.subplots(figsize=(1.8 + 2.2 * len(noises), 3.6))
    for k, (arm, color) in enumerate((("exact", "tab:grey"), ("aware", "tab:green"))):
        for i, noise in enumerate(noises):
            ys = [r["pcc"] for r in rows if r["noise"] == noise and r["arm"] == arm]
            ax.scatter(np.full(len(ys), i + (k - 0.5) * 0.25), ys, color=color, s=30,
                       label=("taken as exact" if arm == "exact" else "fitted at the swap-read flip rate")
                       if i == 0 else None)
            if arm == "aware":
                eps = [r["fitted_flip_rate"] for r in rows if r["noise"] == noise and r["arm"] == arm]
                err = [r["true_error"] for r in rows if r["noise"] == noise and r["arm"] == arm]
                ax.annotate(f"ε read {np.mean(eps):.3f}, true {np.mean(err):.3f}", (i, 0.995),
                            ha="center", va="top", fontsize=7)
    ax.set_xticks(range(len(noises)), noises)
    ax.set_ylabel(r"PCC($\hat\Phi$, $\Phi^*$)")
    ax.set_ylim(top=1.0)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"LLM with order swap behind the local server, {TARGET}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one noise, one seed, 600 answers; a temporary folder")
    ap.add_argument("--budget", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "local")  # the local server takes any key
    target = load_target(TARGET)
    noises = ["flip-0.2"] if args.quick else list(NOISES)
    seeds = range(1 if args.quick else args.seeds)
    budget = 600 if args.quick else args.budget
    out = Path(tempfile.mkdtemp()) if args.quick else args.out
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(z, s) for z in noises for s in seeds]
    bar = tqdm(jobs, desc="reliability", unit="cell") if tqdm else jobs
    rows: list[dict] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for noise, seed in bar:
            rows += cell(noise, seed, budget, Path(folder), target)
    print(f"{'noise':<15}{'seed':>5}{'PCC exact':>11}{'PCC aware':>11}{'ε read':>9}{'true err':>10}")
    for noise, seed in jobs:
        ex, aw = (next(r for r in rows if (r["noise"], r["seed"], r["arm"]) == (noise, seed, a))
                  for a in ("exact", "aware"))
        print(f"{noise:<15}{seed:>5}{ex['pcc']:>11.4f}{aw['pcc']:>11.4f}{aw['fitted_flip_rate']:>9.3f}"
              f"{aw['true_error']:>10.3f}")
    result = {"target": TARGET, "budget": budget, "llm": {"batch_size": 8, "concurrency": 4, "order_swap": True},
              "learner_rank": 16, "machine": platform.platform(), "python": platform.python_version(),
              "load_average": os.getloadavg(), "wall_s": time.perf_counter() - t0, "rows": rows}
    (out / "reliability.json").write_text(json.dumps(result, indent=1))
    plot(rows, out / "reliability.png")
    print(f"wrote {out / 'reliability.json'}, {out / 'reliability.png'}")


if __name__ == "__main__":
    main()
