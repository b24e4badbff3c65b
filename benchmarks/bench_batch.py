"""LLM batch mode at scale: a million triplets through the local server's Files and Batch APIs.

Starts ``fbloop serve-oracle`` (a separate process, its files in a temporary folder) and, for each
run size, runs ``--agent llm --llm-mode batch --watch`` in a child process of its own (so that each
size's peak memory is its own): every chunk of 50,000 triplets is rendered into batch input lines,
uploaded with ``files.create(purpose="batch")``, started with ``batches.create``, polled, and its
output streamed back into SQLite through the strict parser; the learner learns as batches finish.

    python benchmarks/bench_batch.py                      # 250,000 and 1,000,000 triplets
    python benchmarks/bench_batch.py --sizes 20000        # a quick look
    python benchmarks/bench_batch.py --sizes 500000 1000000 --max-rows 250000 --name batch_scale_bounded
                                                          # the learner holding a 250,000-answer sample

Writes ``benchmarks/results/batch_scale.{json,png}``: per size the files and batches, upload
throughput (lines rendered and written, and bytes sent), ingest throughput (result lines downloaded,
parsed and stored per second, goal ≥ 20,000 answers/s on 2 cores), the child's peak RSS (goal
< 1 GiB whatever the size), the database's size and the PCC reached.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TARGET = "synthetic:p=32,rank=8"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, folder: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "fbloop.cli", "serve-oracle", "--target", TARGET, "--port", str(port),
            "--batch-folder", folder]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"serve-oracle exited: {proc.stderr.read().decode()}")
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("serve-oracle did not start within 60 s")


def one(size: int, url: str, db: Path, out: Path, max_rows: int | None = 1_000_000) -> None:
    """One run in this process (the child): its figures as JSON in ``out``."""
    from fbloop.agents.batch import BatchConfig
    from fbloop.agents.llm import LLMConfig
    from fbloop.learners import LearnerConfig
    from fbloop.loop import RunConfig, run_loop
    from fbloop.queries.designs import DesignConfig
    from fbloop.store import Store

    cfg = RunConfig(target=TARGET, design=DesignConfig(name="triplet"), agent="llm", budget=size, rfm_mse=False,
                    learner_config=LearnerConfig(rank=8, max_rows=max_rows),  # rank 8: the target's
                    llm=LLMConfig(base_url=url, structured="json_schema", cost_prompt_1k=0.00015,
                                  cost_completion_1k=0.0006),  # gpt-4o-mini's list prices, $ per 1k tokens
                    batch=BatchConfig(poll_s=1.0, poll_max_s=5.0))
    t0 = time.perf_counter()
    with Store(db) as store:
        res = run_loop(cfg, store, run_id="bench", watch=threading.Event(), poll_s=0.5)
        batches = store.batches("bench")
    wall = time.perf_counter() - t0
    u = res.extra["llm"]
    work = u["batches"]["this_process"]
    db_bytes = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))
    t_first = min(b["created_at"] for b in batches)
    out.write_text(json.dumps({
        "triplets": size, "answers": res.answers, "pcc": res.pcc, "max_rows": max_rows,
        "learned": res.extra.get("learned"), "held": res.extra.get("held", res.extra.get("learned")), "wall_s": round(wall, 1),
        "files": len(batches), "batches": len({b["batch_id"] for b in batches}),
        "requests": u["batches"]["requests"], "bytes_uploaded": work["uploaded_bytes"],
        "write_s": work["write_s"], "upload_s": work["upload_s"],
        "write_lines_per_s": round(work["uploaded_requests"] / work["write_s"], 1),
        "upload_mb_per_s": round(work["uploaded_bytes"] / 1e6 / work["upload_s"], 1),
        "ingest_s": work["ingest_s"], "ingested_lines": work["ingested_lines"],
        "ingest_answers_per_s": round(work["ingested_lines"] / work["ingest_s"], 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "db_mib": round(db_bytes / 2**20, 1), "db_bytes_per_answer": round(db_bytes / max(res.answers, 1), 1),
        "prompt_tokens": u["prompt_tokens"], "completion_tokens": u["completion_tokens"],
        "cost_batch": round(u["cost"], 4), "cost_sync": round(u["cost_sync"], 4), "polls": work["polls"],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],  # other sessions share the cores
        "timeline": [{"file": b["id"], "requests": b["requests"], "created_s": round(b["created_at"] - t_first, 1),
                      "submitted_s": round(b["submitted_at"] - t_first, 1),
                      "ingested_s": round(b["ingested_at"] - t_first, 1)} for b in batches],
    }, indent=2) + "\n")


def ingest_only(size: int, folder: Path) -> dict:
    """Ingest alone (this process, nothing else of fbloop's running): an offline run of ``size``
    triplets records its asks, a result file of ``size`` lines in the Batch API's output format is
    written, and :class:`Ingester` stores it; answers/s and this process's peak RSS."""
    import numpy as np

    from fbloop.agents.batch import BatchConfig, BatchLLM, Ingester, custom_id
    from fbloop.agents.llm import LLMConfig
    from fbloop.learners import LearnerConfig
    from fbloop.loop import RunConfig, run_loop
    from fbloop.queries.designs import DesignConfig
    from fbloop.store import Store

    cfg = RunConfig(target=TARGET, design=DesignConfig(name="triplet"), agent="llm", budget=size, rfm_mse=False,
                    learner_config=LearnerConfig(rank=8), llm=LLMConfig(structured="json_schema"),
                    batch=BatchConfig(mode="offline"))
    db, results = folder / f"ingest-{size}.db", folder / f"ingest-{size}.jsonl"
    rng = np.random.default_rng(0)
    with Store(db) as store:
        run_loop(cfg, store, run_id="I")
        with results.open("w") as fh:
            for s in range(size):
                body = {"id": f"chatcmpl-{s:024d}", "object": "chat.completion", "created": 0, "model": "m",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": json.dumps(
                            {"answer": ("first", "second")[int(rng.integers(2))]})}, "finish_reason": "stop",
                            "logprobs": None}], "usage": {"prompt_tokens": 400, "completion_tokens": 5,
                                                          "total_tokens": 405}}
                fh.write(json.dumps({"id": f"batch_req_{s:024d}", "custom_id": custom_id("I", [s], 0, 0),
                                     "response": {"status_code": 200, "request_id": f"req_{s}", "body": body},
                                     "error": None}) + "\n")
        llm = BatchLLM(cfg.llm, None)
        llm.offline = True
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        with results.open("rb") as fh:
            rep = Ingester(llm, store, "I").ingest(fh)
        took = time.perf_counter() - t0
    assert rep.stored == size, rep.to_dict()
    return {"lines": size, "ingest_s": round(took, 2), "answers_per_s": round(size / took, 1),
            "peak_rss_mib_before": round(rss0, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in rows:
        tl = sorted(r["timeline"], key=lambda t: t["ingested_s"])
        done, n = [], 0
        for t in tl:
            n += t["requests"]
            done.append(n)
        sub = sorted(r["timeline"], key=lambda t: t["submitted_s"])
        asked, m = [], 0
        for t in sub:
            m += t["requests"]
            asked.append(m)
        line, = ax.step([t["submitted_s"] for t in sub], asked, where="post", ls=":",
                        label=f"{r['triplets']:,}: submitted")
        ax.step([t["ingested_s"] for t in tl], done, where="post", color=line.get_color(),
                label=f"{r['triplets']:,}: answers stored")
    ax.set_xlabel("seconds since the first batch")
    ax.set_ylabel("requests")
    ax.set_title("batches submitted and answers stored")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    names = ["ingest answers/s", "write lines/s", "peak RSS MiB"]
    keys = ["ingest_answers_per_s", "write_lines_per_s", "peak_rss_mib"]
    w = 0.8 / len(rows)
    for i, r in enumerate(rows):
        bx.bar([k + i * w for k in range(len(keys))], [r[k] for k in keys], w, label=f"{r['triplets']:,} triplets")
    bx.axhline(20_000, color="k", ls="--", lw=0.8)
    bx.text(0, 21_000, "ingest goal 20,000/s", fontsize=8)
    bx.axhline(1024, color="r", ls="--", lw=0.8)
    bx.text(1.6, 1100, "memory goal 1 GiB", fontsize=8, color="r")
    bx.set_yscale("log")
    bx.set_xticks([k + w * (len(rows) - 1) / 2 for k in range(len(keys))], names)
    bx.set_title("throughput and memory")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[250_000, 1_000_000])
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--ingest-only", type=int, nargs="*", metavar="LINES",
                    help="Only time ingesting result files of these sizes (each in a process of its own); "
                         "adds ingest_only to the results JSON")
    ap.add_argument("--name", default="batch_scale", help="the results' file name (.json and .png)")
    ap.add_argument("--max-rows", type=int, default=1_000_000,
                    help="the learner's LearnerConfig.max_rows: answers held for fitting (0: all)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child: one run
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "local")
    if args.one and args.url:
        one(args.one, args.url, args.db, args.result, args.max_rows or None)
        return
    if args.one:  # an ingest-only child
        args.result.write_text(json.dumps(ingest_only(args.one, args.db.parent)) + "\n")
        return
    if args.ingest_only:
        work = Path(tempfile.mkdtemp(prefix="fbloop-bench-ingest-"))
        found = []
        try:
            for size in args.ingest_only:
                result = work / f"ingest-{size}.json"
                subprocess.run([sys.executable, __file__, "--one", str(size), "--db", str(work / "x.db"),
                                "--result", str(result)], check=True)
                found.append(json.loads(result.read_text()))
                print(f"ingest only, {size:,} lines: {found[-1]['answers_per_s']:,.0f} answers/s, peak RSS "
                      f"{found[-1]['peak_rss_mib']} MiB", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        path = args.out / "batch_scale.json"
        out = json.loads(path.read_text()) if path.exists() else {"benchmark": "batch_scale"}
        out["ingest_only"] = found
        path.write_text(json.dumps(out, indent=2) + "\n")
        return
    load = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="fbloop-bench-batch-"))
    port = free_port()
    server = start_server(port, str(work / "server"))
    rows = []
    try:
        for size in args.sizes:
            db, result = work / f"run-{size}.db", work / f"run-{size}.json"
            subprocess.run([sys.executable, __file__, "--one", str(size), "--url", f"http://127.0.0.1:{port}/v1",
                            "--db", str(db), "--result", str(result), "--max-rows", str(args.max_rows)], check=True)
            rows.append(json.loads(result.read_text()))
            r = rows[-1]
            print(f"{size:>9,} triplets: {r['files']} files / {r['batches']} batches, write {r['write_lines_per_s']:,.0f} "
                  f"lines/s, upload {r['upload_mb_per_s']} MB/s, ingest {r['ingest_answers_per_s']:,.0f} answers/s, "
                  f"peak RSS {r['peak_rss_mib']} MiB, DB {r['db_mib']} MiB, PCC {r['pcc']:.4f}, {r['wall_s']} s",
                  flush=True)
            for p in work.glob(f"run-{size}.db*"):
                p.unlink()
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"benchmark": "batch_scale", "target": TARGET, "chunk": 50_000, "max_rows": args.max_rows or None,
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                       "loadavg_at_start": load,  # a shared machine: other work competes for the cores
                       "affinity": sorted(os.sched_getaffinity(0))},  # the cores it may use (taskset)
           "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}
    (args.out / f"{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(rows, args.out / f"{args.name}.png")
    print(f"wrote {args.out / (args.name + '.json')} and {args.out / (args.name + '.png')}")


if __name__ == "__main__":
    main()
