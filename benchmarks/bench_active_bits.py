"""What picking from a pool can save: expected bits per ternary answer, the pool's best against a random candidate.

A diagnostic for ``bench_active.py``'s goal (≥ 3× fewer answers than random at PCC 0.9). It drives the
learner on uniformly random answers exactly as that benchmark's random arm does (same targets, noise,
learner, rounds), and after each round scores ``--candidates`` fresh triplets, in pools of 10 as the
strategies pick from, by the expected information their answer carries about ``Φ`` (BALD:
``H[E P] − E H[P]``). The posterior on each candidate's relative margin ``ρ`` is Gaussian, centred on
``Φ̂``'s ``ρ̂``, with one of three variances:

- ``measured``: one variance for every candidate, the mean squared error of ``ρ̂`` against ``Φ*``'s ``ρ`` on
  these candidates: a selector that knows how wrong ``Φ̂`` is overall, and nothing per candidate;
- ``ensemble``: the ``ensemble`` strategy's per-candidate spread (8 perturbed copies), scaled to the same mean:
  what that strategy would know with its spread calibrated;
- ``true-error``: each candidate's own squared error ``(ρ̂ − ρ*)²``: a selector that knows how wrong ``Φ̂`` is
  on each candidate, though not in which direction.

A fourth column, ``one-bit``, is a cap for any query at all, picked or built: no ternary answer tells more
than 1 bit, against a random candidate's bits under whichever of the three posteriors credits it most (the
lowest cap). Each other column sets its best against random under its own posterior, so a column may pass
this cap: the exchange is an estimate, not a bound.

BALD of a Gaussian ``ρ ~ N(μ, v)``: under logistic noise ``σ(ρ/T)`` both expectations by 40-node
Gauss–Hermite quadrature; under flips of rate ``ε`` on a noise-free step in closed form:
``h(ε + (1−2ε)·Φ(μ/√v)) − h(ε)``.

The gain at a round is the mean bits of each pool's best over those of a random candidate. "Integrated to
PCC 0.9" exchanges bits for answers: an adaptive run that gets ``gain`` times the bits from each answer at
every state random's run passes through needs ``n₀ + Σ Δnᵢ / gainᵢ₋₁`` answers where random needs ``n(0.9)``
(``n₀`` = the shared random start). An estimate under that exchange, not a bound.

    python benchmarks/bench_active_bits.py                       # RFM, p = 32, p = 128; 3 noises; 3 seeds
    python benchmarks/bench_active_bits.py --targets p512 --noises logistic-T0.05 flip-0.1 --seeds 1 --merge
    python benchmarks/bench_active_bits.py --targets p32 --seeds 1 --out "$(mktemp -d)"   # a smoke run

Writes ``benchmarks/results/active_bits.{json,png}``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # as bench_active: BLAS threads thrash on a shared 2-core machine

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded as a module, not run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.special import ndtr  # noqa: E402

from bench_active import NOISES, OUT, TARGETS, crossing, learner_config, load  # noqa: E402
from fbloop import metrics  # noqa: E402
from fbloop.agents import OracleAgent  # noqa: E402
from fbloop.learners import GradientLearner  # noqa: E402
from fbloop.queries.active import ActiveConfig, NoiseModel, binary_entropy, compress_factor, perturbed_factors, relative_margins, sample_triplets
from fbloop.queries.designs import DesignConfig
from fbloop.records import Queries  # noqa: E402
from fbloop.sparse import SparseBatch  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # the bar is a nicety
    tqdm = None

POOL = ActiveConfig().pool  # candidates per query the strategies pick from
POSTERIORS = ("measured", "ensemble", "true-error")
ONE_BIT = "one-bit"  # no ternary answer tells more than 1 bit: the cap for any query, built or picked
COLUMNS = POSTERIORS + (ONE_BIT,)
LEVEL = 0.9
NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(40)  # E f(Z), Z ~ N(0, 1), as Σ wᵢ f(xᵢ)
WEIGHTS = WEIGHTS / WEIGHTS.sum()


def _h(prob: np.ndarray) -> np.ndarray:
    return binary_entropy(np.clip(prob, 1e-12, 1 - 1e-12))


def gaussian_bald(mu: np.ndarray, var: np.ndarray, noise: NoiseModel) -> np.ndarray:
    """Expected information (bits) of the answer about ``ρ ~ N(mu, var)``, elementwise."""
    var = np.maximum(var, 1e-12)
    if noise.kind == "flip":
        eps = noise.flip
        return _h(eps + (1 - 2 * eps) * ndtr(mu / np.sqrt(var))) - _h(np.asarray(eps))
    rho = mu[..., None] + np.sqrt(var)[..., None] * NODES  # (..., q) Gauss–Hermite nodes of N(mu, var)
    prob = 1 / (1 + np.exp(-np.clip(rho / noise.temperature, -500, 500)))
    return _h(prob @ WEIGHTS) - _h(prob) @ WEIGHTS


def gains(rho_hat: np.ndarray, rho_true: np.ndarray, spread: np.ndarray, noise: NoiseModel) -> dict:
    """Per posterior: mean bits of a random candidate, of each pool's best, and their ratio."""
    err2 = (rho_hat - rho_true) ** 2
    variances = {"measured": np.full_like(err2, err2.mean()),
                 "ensemble": spread * err2.mean() / max(spread.mean(), 1e-300),
                 "true-error": err2}
    out = {}
    for name, var in variances.items():
        bits = gaussian_bald(rho_hat, var, noise)
        best = bits.reshape(-1, POOL).max(axis=1).mean()
        out[name] = {"random_bits": float(bits.mean()), "best_bits": float(best),
                     "gain": float(best / max(bits.mean(), 1e-300))}
    rand = max(out[name]["random_bits"] for name in POSTERIORS)  # the posterior that credits random answers most
    out[ONE_BIT] = {"random_bits": rand, "best_bits": 1.0, "gain": float(1.0 / max(rand, 1e-300))}
    return out


def run_one(name: str, noise: str, seed: int, candidates: int, growth: float) -> dict:
    t = load(name, seed)
    p, ocfg = t.p, NOISES[noise]
    truth = compress_factor(t.factor, t.rank)
    oracle = OracleAgent(truth, SparseBatch(np.zeros((1, 1), np.int64), np.ones((1, 1)), p),
                         dataclasses.replace(ocfg, seed=seed))
    model = NoiseModel(kind=ocfg.noise, temperature=ocfg.temperature, flip=ocfg.flip)
    lcfg = learner_config(t, ocfg, seed)
    learner = GradientLearner(p, lcfg)
    if ocfg.noise == "flip":
        learner.set_source_noise({0: ocfg.flip})
    design = DesignConfig(name="triplet")
    rng = np.random.default_rng([seed, 7])  # bench_active's random arm draws its answers from this stream
    cand = sample_triplets(np.random.default_rng([seed, 99]), candidates, p, design)
    rho_true = relative_margins(*cand, truth)
    acfg = ActiveConfig()
    n, target_n, rounds = 0, max(50, 3 * p), []
    while True:
        a, b, c = sample_triplets(rng, target_n - n, p, design)
        ans = oracle.answer(Queries("triplet", np.arange(n, target_n), a, b, c))
        learner.add_triplets(a, b, c, ans.value)
        n = target_n
        learner.step(max(100, int(3 * n / lcfg.batch_size)))
        u = learner.factor()
        pcc = metrics.pcc_factored(u, t.factor)
        score_u = compress_factor(u, acfg.score_rank)
        rho_hat = relative_margins(*cand, score_u)
        own = np.random.default_rng([seed, n])  # not rng: random's stream of questions stays bench_active's
        copies = perturbed_factors(score_u, acfg.ensemble, acfg.perturb, own)
        spread = relative_margins(*cand, copies).var(axis=0)
        rounds.append({"answers": n, "pcc": pcc, "rho_rmse": float(np.sqrt(np.mean((rho_hat - rho_true) ** 2))),
                       "posteriors": gains(rho_hat, rho_true, spread, model)})
        if pcc >= LEVEL + 0.03 or n >= TARGETS[name][1]:
            break
        target_n = int(np.ceil(n * growth))
    n90 = crossing(rounds, LEVEL)
    return {"target": name, "p": p, "noise": noise, "seed": seed, "candidates": candidates, "rounds": rounds,
            "random_answers_to_0.9": n90,
            "integrated_gain_to_0.9": {post: integrated(rounds, n90, post) for post in COLUMNS}}


def integrated(rounds: list[dict], n90: float | None, post: str) -> float | None:
    """``n(0.9) / (n₀ + Σ Δnᵢ / gainᵢ₋₁)`` over random's rounds up to its crossing of PCC 0.9."""
    if n90 is None:
        return None
    adaptive, prev = float(rounds[0]["answers"]), rounds[0]
    for r in rounds[1:]:
        lo, hi = prev["answers"], min(r["answers"], n90)
        if hi > lo:
            adaptive += (hi - lo) / prev["posteriors"][post]["gain"]
        if r["answers"] >= n90:
            break
        prev = r
    return n90 / adaptive


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = list(dict.fromkeys(r["target"] for r in runs))
    noises = list(dict.fromkeys(r["noise"] for r in runs))
    colors = {"measured": "tab:blue", "ensemble": "tab:orange", "true-error": "tab:purple"}
    fig, axes = plt.subplots(len(names), len(noises), figsize=(4.2 * len(noises), 3.2 * len(names)),
                             squeeze=False)
    for i, name in enumerate(names):
        for j, noise in enumerate(noises):
            ax = axes[i][j]
            shown = [r for r in runs if r["target"] == name and r["noise"] == noise
                     and r["random_answers_to_0.9"] is not None]
            if not shown:
                ax.text(0.5, 0.5, f"{name} · {noise}: no run that reached PCC {LEVEL}", ha="center", fontsize=8,
                        transform=ax.transAxes)
                ax.set_axis_off()
                continue
            for r in shown:
                xs = [x["answers"] / r["random_answers_to_0.9"] for x in r["rounds"]]
                for post in POSTERIORS:  # the one-bit cap is in the table: it reaches 10× and more
                    ax.plot(xs, [x["posteriors"][post]["gain"] for x in r["rounds"]], color=colors[post], lw=1,
                            alpha=0.7, label=post if r["seed"] == min(x["seed"] for x in runs) else None)
            ax.axhline(3.0, color="red", lw=0.8, ls="--")
            ax.axvline(1.0, color="k", lw=0.6, ls=":")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}×"))
            ax.set_ylim(bottom=1.0)
            ax.set_title(f"{name} · {noise}", fontsize=9)
            if i == len(names) - 1:
                ax.set_xlabel("random's answers / its answers to PCC 0.9")
            if j == 0:
                ax.set_ylabel(f"bits: best of {POOL} / random")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Expected information of the pool's best candidate against a random one, by posterior", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for name in dict.fromkeys(r["target"] for r in runs):
        for noise in dict.fromkeys(r["noise"] for r in runs):
            mine = [r for r in runs if r["target"] == name and r["noise"] == noise]
            if mine:
                rows.append({"target": name, "noise": noise, "seeds": [r["seed"] for r in mine],
                             "random_answers_to_0.9": _median([r["random_answers_to_0.9"] for r in mine]),
                             **{f"integrated_{post}": _median([r["integrated_gain_to_0.9"][post] for r in mine])
                                for post in COLUMNS}})
    return rows


def _median(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.median(xs)) if xs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", nargs="+", choices=list(TARGETS), default=["rfm", "p32", "p128"])
    ap.add_argument("--noises", nargs="+", choices=list(NOISES), default=list(NOISES))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--candidates", type=int, default=20_000, help="fresh candidates scored each round")
    ap.add_argument("--growth", type=float, default=2 ** 0.5)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--merge", action="store_true",
                    help="keep the stored runs of the targets, noises and seeds not run")
    args = ap.parse_args()
    if args.candidates % POOL:
        ap.error(f"--candidates must be a multiple of the pool size {POOL}, got {args.candidates}")
    torch.set_num_threads(1)
    jobs = [(n, z, s) for n in args.targets for z in args.noises for s in range(args.seeds)]
    t0 = time.perf_counter()
    runs = [run_one(n, z, s, args.candidates, args.growth)
            for n, z, s in (tqdm(jobs, desc="bits", unit="run") if tqdm else jobs)]
    stored = args.out / "active_bits.json"
    if args.merge and stored.exists():
        ran = {(r["target"], r["noise"], r["seed"]) for r in runs}
        kept = json.loads(stored.read_text())["runs"]
        runs = [r for r in kept if (r["target"], r["noise"], r["seed"]) not in ran] + runs
    rows = summarise(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"level": LEVEL, "pool": POOL, "posteriors": list(POSTERIORS), "columns": list(COLUMNS),
              "growth": args.growth,
              "machine": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
              "load_average": os.getloadavg(), "wall_s": time.perf_counter() - t0, "summary": rows, "runs": runs}
    (args.out / "active_bits.json").write_text(json.dumps(result, indent=1))
    plot(runs, args.out / "active_bits.png")
    fmt = lambda x: "—" if x is None else f"{x:.2f}×"  # noqa: E731
    print(f"{'target':<7}{'noise':<16}{'random n@0.9':>13}" + "".join(f"{p:>12}" for p in COLUMNS))
    for r in rows:
        n90 = "—" if r["random_answers_to_0.9"] is None else f"{r['random_answers_to_0.9']:,.0f}"
        print(f"{r['target']:<7}{r['noise']:<16}{n90:>13}" + "".join(f"{fmt(r[f'integrated_{p}']):>12}"
                                                                     for p in COLUMNS))
    print(f"\nwrote {args.out / 'active_bits.json'} and .png; wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
