"""Learner throughput: fbloop's gradient learner against a dense Algorithm 3, in one process.

fbloop's learner (equality pairs: ``embedding_bag`` forward, hand-derived
gradient, row-lazy Adam on the touched rows) is timed against the paper's
Algorithm 3 as written: a dense batch ``X`` (B, p) built from the same stored
pairs, ``X @ U``, the loss ``mean (‖Uᵀu‖² − c‖Uᵀy‖²)² + λ‖U‖²`` through autograd,
``torch.optim.Adam`` over all of ``U``, gradient clipping and the reset
``U[0, 0] = 1``. Both draw uniform minibatches from the same 3·10⁵ stored
3-sparse (or 2-sparse) pairs answered by a random rank-64 target (throughput
does not depend on the answers) and run in float32 with the same threads.

Each cell: build, warm up, then ``--repeats`` timed repeats of whole steps
(≥ ~1 s each, at least one step); pairs/s = steps · batch / seconds; median and
range over repeats. Peak memory: resident set size sampled from /proc every
5 ms while a cell runs (its peak, and its growth over the RSS before the cell;
freed memory is handed back with ``malloc_trim`` between cells), and on a GPU
``torch.cuda.max_memory_allocated``.

    python benchmarks/bench_learner.py                  # full CPU grid, ~5 min on 2 busy cores
    python benchmarks/bench_learner.py --quick          # smoke run, ~30 s (writes to a temporary folder)
    python benchmarks/bench_learner.py --device cuda    # the same grid on a GPU
    python benchmarks/bench_learner.py --accuracy       # PCC as 3-sparse pairs stream in (p = 4096, rank 512)

Writes benchmarks/results/learner_throughput.{json,png} (``--accuracy``:
learner_accuracy.json). The headline is fbloop/dense at p = 4096, s = 2,
r = 512, batch 4096 (target ≥ 20×).

OpenMP: on a machine where other processes hold the cores, libgomp's default
spin-waiting makes every parallel region wait out a descheduled sibling thread
(measured here: fbloop 34k vs 132k pairs/s, dense 4.0k vs 6.2k pairs/s at
2 threads). The script sets ``OMP_WAIT_POLICY=PASSIVE`` before torch loads
unless the caller set it; the JSON records the value.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (libgomp) loads; see the docstring

import argparse  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fbloop import metrics, targets  # noqa: E402
from fbloop.agents.oracle import pair_scales  # noqa: E402
from fbloop.learners import GradientLearner, LearnerConfig  # noqa: E402
from fbloop.queries.catalogue import make_design  # noqa: E402
from fbloop.queries.designs import DesignConfig, sample_sparse
from fbloop.sparse import SparseBatch  # noqa: E402

ROOT = Path(__file__).resolve().parent
HEADLINE = {"p": 4096, "s": 2, "r": 512, "batch": 4096}
TARGET_RATIO = 20.0


# ---------------------------------------------------------------- memory


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the process's high-water mark is the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap pages back so the next cell starts clean
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Peak resident set size while the ``with`` block runs (a thread samples every 5 ms)."""

    def __enter__(self) -> PeakRSS:
        self.before = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


# ---------------------------------------------------------------- the two learners


def stored_pairs(p: int, s: int, n: int, seed: int = 0) -> tuple[SparseBatch, np.ndarray, SparseBatch]:
    """``n`` s-sparse activations (values in (0, 1]), their scales under a random rank-64 ``Φ*``, anchor e_0."""
    rng = np.random.default_rng(seed)
    idx, val = sample_sparse(rng, n, p, 0.9, s)
    u = SparseBatch(idx, val, p)
    anchor = SparseBatch(np.array([[0]]), np.array([[1.0]]), p)
    factor = rng.standard_normal((p, 64)) / 8.0
    c = np.concatenate([pair_scales(u[i:i + 50_000], anchor, factor) for i in range(0, n, 50_000)])
    return u, c, anchor


class DenseAlgorithm3:
    """The paper's Algorithm 3 as written: dense ``X @ U``, autograd, Adam over all of ``U``."""

    def __init__(self, u: SparseBatch, c: np.ndarray, r: int, batch: int, device: torch.device,
                 lr: float = 0.01, weight_decay: float = 1e-4, clip: float = 10.0, seed: int = 0):
        self.p, self.batch, self.device = u.p, batch, device
        self.weight_decay, self.clip = weight_decay, clip
        self.gen = torch.Generator().manual_seed(seed)
        self.idx = torch.as_tensor(u.indices, device=device)  # (N, s)
        self.val = torch.as_tensor(u.values, device=device, dtype=torch.float32)
        self.c = torch.as_tensor(c, device=device, dtype=torch.float32)
        u0 = torch.randn(self.p, r, generator=self.gen) / np.sqrt(r)
        self.U = u0.to(device).requires_grad_(True)  # (p, r)
        self.opt = torch.optim.Adam([self.U], lr=lr)

    def step(self, n_steps: int = 1) -> float:
        for _ in range(n_steps):
            sel = torch.randint(0, len(self.c), (self.batch,), generator=self.gen).to(self.device)
            X = torch.zeros(self.batch, self.p, device=self.device)  # (B, p): the activations, dense
            X.scatter_add_(1, self.idx[sel], self.val[sel])
            proj = X @ self.U  # (B, r)
            q = (proj * proj).sum(1)
            qy = self.U[0] @ self.U[0]  # y = e_0
            loss = ((q - self.c[sel] * qy) ** 2).mean() + self.weight_decay * (self.U * self.U).sum()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([self.U], self.clip)
            self.opt.step()
            with torch.no_grad():
                self.U[0, 0] = 1.0
        return float(loss.detach())


def make_fbloop(u: SparseBatch, c: np.ndarray, anchor: SparseBatch, r: int, batch: int, device: str,
                threads: int) -> tuple[GradientLearner, float]:
    cfg = LearnerConfig(rank=r, batch_size=batch, threads=threads, device=device, dtype="float32", seed=0)
    learner = GradientLearner(u.p, cfg, anchor)
    t0 = time.perf_counter()
    for i in range(0, len(c), 65_536):  # the loop feeds chunks; time the store's appends too
        learner.add_pairs(u[i:i + 65_536], c[i:i + 65_536])
    return learner, len(c) / (time.perf_counter() - t0)


# ---------------------------------------------------------------- timing


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(model, batch: int, device: str, repeats: int, repeat_s: float, warmup: int) -> dict:
    """Warm up, pick a step count per repeat that takes ≥ ``repeat_s``, time ``repeats`` repeats."""
    t0 = time.perf_counter()
    model.step(warmup)
    sync(device)
    per_step = (time.perf_counter() - t0) / warmup
    n = max(1, int(np.ceil(repeat_s / per_step)))
    rates, secs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.step(n)
        sync(device)
        dt = time.perf_counter() - t0
        secs.append(dt)
        rates.append(n * batch / dt)
    return {"steps_per_repeat": n, "seconds": [round(x, 4) for x in secs],
            "pairs_per_s": [round(x, 1) for x in rates], "median_pairs_per_s": round(statistics.median(rates), 1),
            "min_pairs_per_s": round(min(rates), 1), "max_pairs_per_s": round(max(rates), 1),
            "ms_per_step": round(1000 * statistics.median(secs) / n, 3)}


def run_cell(impl: str, u, c, anchor, r: int, batch: int, args) -> dict:
    release_memory()
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    load0 = os.getloadavg()[0]
    with PeakRSS() as mem:
        if impl == "fbloop":
            model, ingest = make_fbloop(u, c, anchor, r, batch, args.device, args.threads)
            warmup = 3 if args.quick else 10
        else:
            model, ingest = DenseAlgorithm3(u, c, r, batch, torch.device(args.device)), None
            warmup = 1
        timing = time_steps(model, batch, args.device, args.repeats, args.repeat_s, warmup)
    row = {"impl": impl, "p": u.p, "s": u.s, "r": r, "batch": batch, "stored_pairs": len(c), **timing,
           "peak_rss_mib": round(mem.peak / 2**20, 1), "rss_growth_mib": round((mem.peak - mem.before) / 2**20, 1),
           "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)]}
    if ingest is not None:
        row["ingest_pairs_per_s"] = round(ingest, 1)
    if cuda:
        row["cuda_max_memory_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    del model
    return row


# ---------------------------------------------------------------- output


def machine_info(args) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "device": args.device, "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    if args.device.startswith("cuda"):
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    for d in (r for r in rows if r["impl"] == "dense"):
        for f in (r for r in rows if r["impl"] == "fbloop" and (r["p"], r["s"], r["r"]) == (d["p"], d["s"], d["r"])):
            out.append({"p": d["p"], "s": d["s"], "r": d["r"], "fbloop_batch": f["batch"], "dense_batch": d["batch"],
                        "ratio_median": round(f["median_pairs_per_s"] / d["median_pairs_per_s"], 2),
                        # worst and best case over repeats: slowest fbloop vs fastest dense and vice versa
                        "ratio_range": [round(f["min_pairs_per_s"] / d["max_pairs_per_s"], 2),
                                        round(f["max_pairs_per_s"] / d["min_pairs_per_s"], 2)]})
    return out


def print_table(rows: list[dict], rats: list[dict]) -> None:
    print(f"\n{'impl':<7}{'p':>6}{'s':>3}{'r':>5}{'batch':>7}{'pairs/s median':>16}{'range':>22}"
          f"{'ms/step':>9}{'peak RSS MiB':>14}{'growth':>8}")
    for r in rows:
        rng = f"{r['min_pairs_per_s']:,.0f}–{r['max_pairs_per_s']:,.0f}"
        print(f"{r['impl']:<7}{r['p']:>6}{r['s']:>3}{r['r']:>5}{r['batch']:>7}{r['median_pairs_per_s']:>16,.0f}"
              f"{rng:>22}{r['ms_per_step']:>9.1f}{r['peak_rss_mib']:>14,.0f}{r['rss_growth_mib']:>8,.0f}"
              + (f"  (GPU peak {r['cuda_max_memory_allocated_mib']:,.0f} MiB)" if "cuda_max_memory_allocated_mib" in r
                 else ""))
    print(f"\n{'fbloop/dense':<14}{'p':>6}{'s':>3}{'fbloop batch':>14}{'ratio':>8}{'range':>16}")
    for q in rats:
        print(f"{'':<14}{q['p']:>6}{q['s']:>3}{q['fbloop_batch']:>14}{q['ratio_median']:>7.1f}×"
              f"{q['ratio_range'][0]:>9.1f}–{q['ratio_range'][1]:.1f}×")


def plot(rows: list[dict], rats: list[dict], meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["p"], r["s"]) for r in rows})
    series = sorted({(r["impl"], r["batch"]) for r in rows}, key=lambda k: (k[0] != "dense", k[1]))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for j, (impl, batch) in enumerate(series):
        xs, ys, lo, hi = [], [], [], []
        for i, g in enumerate(groups):
            row = next((r for r in rows if (r["p"], r["s"], r["impl"], r["batch"]) == (*g, impl, batch)), None)
            if row:
                xs.append(i + (j - (len(series) - 1) / 2) * width)
                ys.append(row["median_pairs_per_s"])
                lo.append(row["median_pairs_per_s"] - row["min_pairs_per_s"])
                hi.append(row["max_pairs_per_s"] - row["median_pairs_per_s"])
        label = "dense Algorithm 3" if impl == "dense" else "fbloop"
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=f"{label}, batch {batch}",
                      color="0.6" if impl == "dense" else None)
        if impl == "fbloop":
            for x, top, g in zip(xs, np.add(ys, hi), groups):
                q = next((q for q in rats if (q["p"], q["s"], q["fbloop_batch"]) == (*g, batch)), None)
                if q:
                    ax.annotate(f"{q['ratio_median']:.0f}×", (x, top), ha="center", va="bottom", fontsize=8,
                                xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(groups)), [f"p = {p}\ns = {s}" for p, s in groups])
    ax.set_yscale("log")
    ax.set_ylim(min(r["min_pairs_per_s"] for r in rows) / 3, max(r["max_pairs_per_s"] for r in rows) * 3)
    ax.set_ylabel("pairs / s (median; whiskers: range over repeats)")
    dev = meta.get("cuda_device") or meta.get("cpu_model") or meta["processor"]
    ax.set_title(f"Learner throughput, r = {rows[0]['r']} ({meta['device']}, {meta['threads']} threads; {dev})\n"
                 "labels: fbloop ÷ dense (dense at batch 4096)", fontsize=9)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- accuracy


def accuracy(args) -> None:
    """PCC of Φ̂ as 3-sparse pairs against a synthetic rank-512 target stream in (the loop's pattern)."""
    p, rank = (1024, 128) if args.quick else (4096, 512)
    total = 100_000 if args.quick else 1_000_000
    chunk, epochs, batch = total // 20, 10, 4096
    target = targets.synthetic(targets.SyntheticConfig(p=p, rank=rank, d=rank, seed=0))
    design = make_design(DesignConfig(name="sparse", mu=0.9, s=3), target, 0)
    anchor = design.anchor()
    runs = []
    # The defaults (lr 0.01, λ 1e-4), then lr 1e-3 without weight decay: at p = 4096 each row sees only
    # B·s/p ≈ 3 pairs a step, so λ outweighs its data gradient and Adam's per-coordinate steps of
    # size lr are mostly noise.
    for lr, lam in ((0.01, 1e-4), (1e-3, 0.0)):
        cfg = LearnerConfig(rank=rank, batch_size=batch, threads=args.threads, device=args.device,
                            dtype="float32", lr=lr, weight_decay=lam, seed=0)
        learner = GradientLearner(p, cfg, anchor)
        curve, t0, step_s = [], time.perf_counter(), 0.0
        for start in range(0, total, chunk):
            q = design.queries(start, start + chunk)
            c = np.concatenate([pair_scales(q.a[i:i + 20_000], anchor, target.factor)
                                for i in range(0, chunk, 20_000)])
            learner.add_pairs(q.a, c)
            t1 = time.perf_counter()
            loss = learner.step(max(1, epochs * chunk // batch))  # ~10 draws per new pair, spread over all
            step_s += time.perf_counter() - t1
            pcc = metrics.pcc_factored(learner.factor(), target.factor)
            curve.append({"pairs": start + chunk, "pcc": round(pcc, 4), "loss": loss, "steps": learner.steps,
                          "learner_s": round(step_s, 1), "wall_s": round(time.perf_counter() - t0, 1)})
            print(f"lr={lr:g} λ={lam:g} pairs {start + chunk:>9,} PCC {pcc:.4f} loss {loss:.3e} steps {learner.steps} "
                  f"learner {step_s:.0f}s", flush=True)
        runs.append({"lr": lr, "weight_decay": lam, "curve": curve})
    out = {"benchmark": "learner_accuracy", "p": p, "target_rank": rank, "r": rank, "design": "sparse mu=0.9 s=3",
           "chunk": chunk, "steps_per_chunk": max(1, epochs * chunk // batch), "batch": batch,
           "paper": "ChessGPT SAE 4096×512, 3-sparse: PCC 0.7152 / 0.8256 / 0.9625 at 1M / 2M / 4M pairs",
           "machine": machine_info(args), "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learner_accuracy.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out / 'learner_accuracy.json'}")


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smoke run: p = 1024 only, short repeats")
    ap.add_argument("--accuracy", action="store_true", help="PCC as pairs stream in, instead of throughput")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per cell (default 5; quick 2)")
    ap.add_argument("--repeat-s", type=float, default=None, help="seconds per repeat (default 1.0; quick 0.3)")
    ap.add_argument("--out", type=Path, default=None,
                    help="results folder (default benchmarks/results; --quick: a temporary folder)")
    args = ap.parse_args()
    if args.out is None:  # a smoke run never overwrites the recorded results
        args.out = Path(tempfile.gettempdir()) / "fbloop-bench" if args.quick else ROOT / "results"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.repeat_s = args.repeat_s or (0.3 if args.quick else 1.0)
    if args.accuracy:
        return accuracy(args)

    r = 512
    grid = [(1024, 2)] if args.quick else [(4096, 2), (4096, 3), (32768, 2), (32768, 3)]
    stored = 50_000 if args.quick else 300_000
    meta = machine_info(args)
    rows = []
    for p, s in grid:
        u, c, anchor = stored_pairs(p, s, stored)
        for impl, batch in (("fbloop", 4096), ("fbloop", 16384), ("dense", 4096)):
            row = run_cell(impl, u, c, anchor, r, batch, args)
            rows.append(row)
            print(f"{impl:<7} p={p:<6} s={s} batch={batch:<6} {row['median_pairs_per_s']:>12,.0f} pairs/s "
                  f"[{row['min_pairs_per_s']:,.0f}–{row['max_pairs_per_s']:,.0f}]  peak RSS "
                  f"{row['peak_rss_mib']:,.0f} MiB", flush=True)
    rats = ratios(rows)
    print_table(rows, rats)
    head = next((q for q in rats if (q["p"], q["s"], q["r"], q["fbloop_batch"]) == tuple(HEADLINE.values())), None)
    if head:
        miss = "" if head["ratio_median"] >= TARGET_RATIO else \
            f" — misses the {TARGET_RATIO:.0f}× target by {TARGET_RATIO - head['ratio_median']:.1f}×"
        lo, hi = head["ratio_range"]
        print(f"\nheadline fbloop/dense at p=4096, s=2, r=512, batch 4096: {head['ratio_median']:.1f}× "
              f"(range {lo:.1f}–{hi:.1f}×; target ≥ {TARGET_RATIO:.0f}×){miss}")
    meta["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = {"benchmark": "learner_throughput", "quick": args.quick, "repeats": args.repeats,
           "repeat_s": args.repeat_s, "dtype": "float32", "lr": 0.01, "weight_decay": 1e-4, "clip": 10.0,
           "machine": meta, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "headline": head,
           "target_ratio": TARGET_RATIO, "rows": rows, "ratios": rats}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learner_throughput.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(rows, rats, meta, args.out / "learner_throughput.png")
    print(f"wrote {args.out / 'learner_throughput.json'} and {args.out / 'learner_throughput.png'}")


if __name__ == "__main__":
    main()
