"""The annotation app under a crowd: assignment, server-side speed at scale, concurrent writers.

Four parts, each through fbloop's own code (``fbloop.agents.people``, the store, ``app.py`` in
Streamlit's ``AppTest``), on SQLite on disk:

- **coverage**: ``--people`` simulated annotators (34) answer ``--each`` triplets (20) apiece,
  taking turns, at overlap 1 and at overlap 3: distinct triplets covered, people per triplet;
- **scale**: one file with a ``--queue``-triplet queue (1,000,000) and ``--answers`` stored
  answers (110,000) from ``--annotators`` people (151). Timed server-side: a click (``submit``
  plus drawing the next question, ``next_query``) for ``--clicks`` random annotators, the
  annotate page's progress, the owner's dashboard first render and an annotator's form render
  (``AppTest``, the whole script);
- **concurrency**: ``--procs`` processes (50) × ``--per-proc`` answers (200), each its own
  connection through ``next_query`` + ``submit``, while another process writes a
  ``--concurrent-queue``-triplet queue (200,000) into the same file: answers stored, errors
  an annotator would have seen, lost and doubled answers.

    python benchmarks/bench_crowd.py            # all parts (~10–20 min on 2 busy cores)
    python benchmarks/bench_crowd.py --quick    # small sizes, a temporary folder: a smoke run
    python benchmarks/bench_crowd.py --parts scale

Writes benchmarks/results/crowd.json and crowd.png.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fbloop.agents import people as human  # noqa: E402
from fbloop.errors import FbloopError  # noqa: E402
from fbloop.records import Answers  # noqa: E402
from fbloop.records import Queries  # noqa: E402
from fbloop.sparse import SparseBatch  # noqa: E402
from fbloop.store import Store  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
P = 64  # features of the synthetic run
SPEC = f"synthetic:p={P},rank=8"


def random_triplets(start: int, n: int, rng: np.random.Generator, s: int = 3) -> Queries:
    """``n`` random ``s``-sparse triplets at positions ``start …``."""
    def batch() -> SparseBatch:
        return SparseBatch(rng.integers(0, P, size=(n, s)), rng.random((n, s)) + 0.1, P)
    return Queries("triplet", np.arange(start, start + n, dtype=np.int64), batch(), batch(), batch())


def new_run(store: Store, run_id: str) -> None:
    store.create_run(run_id, kind="triplet", p=P, budget=10**9, config={"target": SPEC, "agent": "human"},
                     target={"name": SPEC}, anchor=None)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


# ---------------------------------------------------------------- coverage


def coverage(folder: Path, people: int, each: int) -> dict:
    out = {}
    for overlap, rate in ((1, 0.0), (1, 0.1), (3, 0.1)):
        with Store(folder / f"coverage{overlap}-{rate}.db") as store:
            new_run(store, "r")
            human.queue(store, "r", random_triplets(0, people * each, np.random.default_rng(0)), check_rate=rate)
            human.set_assignment(store, "r", overlap=overlap)
            checks = set(store.checks("r"))
            who: dict[int, set[str]] = {}
            for _ in range(each):
                for i in range(people):
                    q = human.next_query(store, "r", f"ann{i}")
                    if q is not None and human.submit(store, "r", q.seq, f"ann{i}", "first", 900, q.token):
                        who.setdefault(q.seq, set()).add(f"ann{i}")
            real = {s: v for s, v in who.items() if s not in checks}
            per = np.array([len(v) for v in real.values()])  # the last few may still be on their way to `overlap`
            out[f"overlap{overlap}_checks{rate}"] = {
                "answers": int(sum(len(v) for v in who.values())), "check_answers": int(sum(len(who.get(c, ()))
                                                                                          for c in checks)),
                "distinct_triplets": len(real), "people_per_triplet": {str(k): int((per == k).sum())
                                                                       for k in np.unique(per)}}
            print(f"coverage overlap {overlap}, check rate {rate}: {out[f'overlap{overlap}_checks{rate}']}", flush=True)
    return out


# ---------------------------------------------------------------- scale


def build_large(path: Path, queue: int, answers: int, annotators: int) -> dict:
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    with Store(path) as store:
        new_run(store, "big")
        human.queue(store, "big", random_triplets(0, queue, rng), check_rate=0.1)
        t_queue = time.perf_counter() - t0
        order = store.queued("big")
        checks = store.checks("big")
        # Answers in bulk (the submit path would take most of an hour here): each person answers a
        # stretch of the queue's front, overlapping their neighbours' (overlap 3), then the totals are
        # rebuilt from the answers exactly as migration 7 does.
        human.set_assignment(store, "big", overlap=3)
        per = answers // annotators
        for i in range(annotators):
            seq = order[(i * per) // 3:(i * per) // 3 + per]
            value = rng.choice([1.0, -1.0, 0.0], size=len(seq), p=[0.45, 0.45, 0.1])
            expected = np.array([checks.get(int(s), (None, None))[1] for s in seq], dtype=object)
            is_check = np.array([e is not None for e in expected])
            value[is_check] = np.where(rng.random(is_check.sum()) < 0.9, expected[is_check].astype(float), 0.0)
            meta = [{"annotator": f"ann{i}", "response_ms": int(ms), "token": "bulk"}
                    for ms in rng.gamma(4.0, 1500.0, size=len(seq))]
            store.add_answers("big", Answers(f"human:ann{i}", seq, value, np.full(len(seq), "ok"), meta=meta))
        store.rebuild_crowd_totals("big")
        owner = human.owner_token(store)
        token = human.invite(store, "ann0", ["big"])
        n_answers = store.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        n_queue = store.db.execute("SELECT COUNT(*) FROM human_queue").fetchone()[0]
    return {"queue_write_s": t_queue, "build_s": time.perf_counter() - t0, "answers": int(n_answers),
            "queue": int(n_queue), "annotators": annotators, "owner": owner, "token": token,
            "db_mb": path.stat().st_size / 2**20}


def time_clicks(path: Path, annotators: int, clicks: int) -> dict:
    rng = np.random.default_rng(2)
    submit_ms, next_ms, progress_ms = [], [], []
    with Store(path) as store:
        for _ in range(clicks):
            name = f"ann{int(rng.integers(annotators))}"
            t = time.perf_counter()
            q = human.next_query(store, "big", name)
            next_ms.append(1000 * (time.perf_counter() - t))
            if q is None:
                continue
            t = time.perf_counter()
            human.submit(store, "big", q.seq, name, "first", 1500, q.token)
            submit_ms.append(1000 * (time.perf_counter() - t))
            t = time.perf_counter()
            human.progress(store, "big", name)
            progress_ms.append(1000 * (time.perf_counter() - t))
    click = [a + b for a, b in zip(submit_ms, next_ms)]
    return {"clicks": len(submit_ms), "submit_ms": submit_ms, "next_ms": next_ms, "click_ms": click,
            "submit_p50_ms": pct(submit_ms, 50), "submit_p95_ms": pct(submit_ms, 95),
            "click_p50_ms": pct(click, 50), "click_p95_ms": pct(click, 95),
            "progress_p50_ms": pct(progress_ms, 50)}


def time_pages(path: Path, owner: str, token: str, repeats: int) -> dict:
    from streamlit.testing.v1 import AppTest

    os.environ["FBLOOP_DB"] = str(path)
    os.environ["FBLOOP_ACCESS"] = "invite"
    out: dict[str, list[float]] = {"dashboard_s": [], "annotate_s": [], "dashboard_rerun_s": []}
    warm = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)  # a running server has its imports done
    warm.query_params["token"] = owner
    warm.run()
    # AppTest's own cost per new test app (it scans installed packages for components, which a server
    # does once): a one-line script, timed the same way, to read the pages' figures against.
    blank = Path(tempfile.mkdtemp()) / "blank.py"
    blank.write_text("import streamlit as st\nst.write('x')\n")
    out["apptest_blank_s"] = []
    for _ in range(repeats):
        at = AppTest.from_file(str(blank), default_timeout=300)
        t = time.perf_counter()
        at.run()
        out["apptest_blank_s"].append(time.perf_counter() - t)
    for _ in range(repeats):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
        at.query_params["token"] = owner
        t = time.perf_counter()
        at.run()
        out["dashboard_s"].append(time.perf_counter() - t)
        assert not at.exception, at.exception
        t = time.perf_counter()
        at.run()
        out["dashboard_rerun_s"].append(time.perf_counter() - t)
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
        at.query_params["token"] = token
        at.session_state["practice"] = {"big": [{}] * 10}
        t = time.perf_counter()
        at.run()
        out["annotate_s"].append(time.perf_counter() - t)
        assert not at.exception, at.exception
    return {**out, **{k.replace("_s", "_median_s"): float(np.median(v)) for k, v in out.items()}}


# ---------------------------------------------------------------- concurrency


def annotator_proc(path: str, name: str, n: int, start: mp.Event, out: mp.Queue) -> None:
    start.wait()
    stored, refused, errors, doubled = 0, 0, [], 0
    with Store(path) as store:
        while stored + refused < n:
            try:
                q = human.next_query(store, "conc", name)
                if q is None:
                    break
                if human.submit(store, "conc", q.seq, name, "first", 1000, q.token):
                    stored += 1
                else:
                    doubled += 1  # the store refused a repeat: never a second row
            except FbloopError as exc:  # what the form would show the annotator
                errors.append(str(exc)[:200])
                refused += 1
    out.put({"name": name, "stored": stored, "errors": errors, "repeats": doubled})


def writer_proc(path: str, n: int, start: mp.Event, out: mp.Queue) -> None:
    start.wait()
    with Store(path) as store:
        new_run(store, "writer")
        t = time.perf_counter()
        human.queue(store, "writer", random_triplets(0, n, np.random.default_rng(3)), check_rate=0.1)
        out.put({"writer_s": time.perf_counter() - t})


def concurrency(folder: Path, procs: int, per_proc: int, queue: int, settle_s: float = 5.0) -> dict:
    path = folder / "concurrent.db"
    with Store(path) as store:
        new_run(store, "conc")
        human.queue(store, "conc", random_triplets(0, procs * per_proc + 1000, np.random.default_rng(4)),
                    check_rate=0.0)
    ctx = mp.get_context("fork")  # each process opens its own connection; AppTest has replaced __main__ for spawn
    start, out = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=annotator_proc, args=(str(path), f"ann{i}", per_proc, start, out))
               for i in range(procs)]
    workers.append(ctx.Process(target=writer_proc, args=(str(path), queue, start, out)))
    for w in workers:
        w.start()
    time.sleep(settle_s)  # let every process open the store: the race starts together
    t0 = time.perf_counter()
    start.set()
    results = [out.get(timeout=3600) for _ in workers]
    wall = time.perf_counter() - t0
    for w in workers:
        w.join()
    people = [r for r in results if "name" in r]
    with Store(path) as store:
        rows = store.db.execute("SELECT COUNT(*), COUNT(DISTINCT seq || '|' || agent) FROM answers "
                                "WHERE run_id = 'conc'").fetchone()
        per_seq = store.db.execute("SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM answers WHERE run_id = 'conc' "
                                   "GROUP BY seq)").fetchone()[0]
        writer_rows = store.db.execute("SELECT COUNT(*) FROM human_queue WHERE run_id = 'writer'").fetchone()[0]
    reported = sum(r["stored"] for r in people)
    return {"procs": procs, "per_proc": per_proc, "wall_s": wall, "answers_per_s": reported / wall,
            "stored_reported": reported, "rows_in_store": int(rows[0]), "distinct_rows": int(rows[1]),
            "lost": reported - int(rows[0]), "doubled": int(rows[0]) - int(rows[1]),
            "max_people_per_triplet": int(per_seq or 0), "errors_shown": sum(len(r["errors"]) for r in people),
            "error_samples": [e for r in people for e in r["errors"]][:5],
            "repeats_refused": sum(r["repeats"] for r in people), "writer_queue_rows": int(writer_rows),
            "writer_s": next(r["writer_s"] for r in results if "writer_s" in r)}


# ---------------------------------------------------------------- report


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    scale = result.get("scale")
    if scale:
        ax = axes[0]
        for key, label in (("submit_ms", "submit"), ("next_ms", "next question"), ("click_ms", "click = both")):
            xs = np.sort(scale["clicks"][key])
            ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=label)
        ax.axvline(150, color="grey", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("ms, server side")
        ax.set_ylabel("share of clicks")
        ax.set_title(f"{scale['build']['answers']:,} answers, {scale['build']['queue']:,}-triplet queue")
        ax.legend()
        ax = axes[1]
        pages = scale["pages"]
        names = ["dashboard_s", "dashboard_rerun_s", "annotate_s", "apptest_blank_s"]
        ax.bar(range(4), [np.median(pages[n]) for n in names], color=["#4c78a8", "#72b7b2", "#f58518", "#bab0ac"])
        for i, n in enumerate(names):
            ax.scatter([i] * len(pages[n]), pages[n], color="black", s=10, zorder=3)
        ax.axhline(2.0, color="grey", ls="--", lw=1)
        ax.set_xticks(range(4), ["dashboard\nfirst render", "dashboard\nrerun (Live)", "annotate\nform",
                                 "AppTest,\nblank script"])
        ax.set_ylabel("seconds (AppTest, whole script)")
        ax.set_title("page renders")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="coverage,scale,concurrency", help="Comma-separated parts to run.")
    ap.add_argument("--people", type=int, default=34)
    ap.add_argument("--each", type=int, default=20)
    ap.add_argument("--queue", type=int, default=1_000_000)
    ap.add_argument("--answers", type=int, default=110_000)
    ap.add_argument("--annotators", type=int, default=151)
    ap.add_argument("--clicks", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3, help="Page renders timed, each.")
    ap.add_argument("--procs", type=int, default=50)
    ap.add_argument("--per-proc", type=int, default=200)
    ap.add_argument("--concurrent-queue", type=int, default=200_000)
    ap.add_argument("--quick", action="store_true", help="Small sizes, written to a temporary folder.")
    ap.add_argument("--keep", default=None, help="Folder for the databases (default: a temporary one).")
    ap.add_argument("--reuse", action="store_true", help="Scale: time the large file --keep holds, do not rebuild.")
    args = ap.parse_args()
    if args.quick:
        args.queue, args.answers, args.annotators, args.clicks, args.repeats = 20_000, 3_000, 20, 50, 1
        args.procs, args.per_proc, args.concurrent_queue = 4, 20, 20_000
    parts = set(args.parts.split(","))
    folder = Path(args.keep or tempfile.mkdtemp(prefix="bench-crowd-"))
    folder.mkdir(parents=True, exist_ok=True)
    result: dict = {"args": vars(args), "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                                    "load_before": os.getloadavg()}}
    if "coverage" in parts:
        result["coverage"] = coverage(folder, args.people, args.each)
    if "scale" in parts:
        path = folder / "large.db"
        if args.reuse and path.exists():  # the file a previous run built (and clicked in)
            with Store(path) as store:
                build = {"reused": True, "answers": store.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0],
                         "queue": store.db.execute("SELECT COUNT(*) FROM human_queue").fetchone()[0],
                         "annotators": args.annotators, "owner": human.owner_token(store),
                         "token": human.invite(store, "ann0", ["big"]), "db_mb": path.stat().st_size / 2**20,
                         "build_s": 0.0}
        else:
            if path.exists():
                path.unlink()
            build = build_large(path, args.queue, args.answers, args.annotators)
        print(f"built {path}: {build['queue']:,} queued, {build['answers']:,} answers, "
              f"{build['db_mb']:.0f} MB in {build['build_s']:.0f} s", flush=True)
        clicks = time_clicks(path, args.annotators, args.clicks)
        print(f"submit p50 {clicks['submit_p50_ms']:.1f} ms, p95 {clicks['submit_p95_ms']:.1f} ms; click "
              f"(submit + next) p50 {clicks['click_p50_ms']:.1f} ms, p95 {clicks['click_p95_ms']:.1f} ms", flush=True)
        pages = time_pages(path, build.pop("owner"), build.pop("token"), args.repeats)
        print(f"dashboard first render {pages['dashboard_median_s']:.2f} s, "
              f"rerun {pages['dashboard_rerun_median_s']:.2f} s, annotate {pages['annotate_median_s']:.2f} s, "
              "AppTest of a blank script "
              f"{pages['apptest_blank_median_s']:.2f} s (medians of {args.repeats})", flush=True)
        result["scale"] = {"build": build, "clicks": clicks, "pages": pages}
    if "concurrency" in parts:
        result["concurrency"] = concurrency(folder, args.procs, args.per_proc, args.concurrent_queue)
        print(f"concurrency: {json.dumps({k: v for k, v in result['concurrency'].items() if k != 'error_samples'})}",
              flush=True)
    result["machine"]["load_after"] = os.getloadavg()
    out = Path(tempfile.mkdtemp()) if args.quick else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    if (out / "crowd.json").exists():  # parts not run this time keep their earlier figures
        earlier = json.loads((out / "crowd.json").read_text())
        result = {**{k: v for k, v in earlier.items() if k in ("coverage", "scale", "concurrency")}, **result}
        result["machine_by_part"] = {**earlier.get("machine_by_part", {}),
                                     **{part: result["machine"] for part in parts}}
    (out / "crowd.json").write_text(json.dumps(result, indent=1, default=float))
    plot(result, out / "crowd.png")
    print(f"wrote {out / 'crowd.json'} and {out / 'crowd.png'}")


if __name__ == "__main__":
    main()
