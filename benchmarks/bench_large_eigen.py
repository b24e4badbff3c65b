"""``fbloop run --design eigen`` on a real-sized dictionary: time to the first answer and peak memory.

The benchmark writes a synthetic low-rank dictionary of the shape of a large SAE
(``--p`` features, ``--d`` dimensions, a float32 ``D`` ``(d, p)`` as safetensors: 512 MiB
at the defaults p = 262,144, d = 512) into a temporary folder, then runs the real CLI,

    python -m fbloop run --target dict:FILE --design eigen --budget N --db DB --json

in a subprocess. While it runs, the script polls the run database for the first stored
answer (time to first answer, from process start) and samples the child's resident set
size from /proc every 50 ms (peak RSS, including its children). It stops the run after
``--after`` seconds past the first answer (or at ``--timeout``) and records what it saw.

    python benchmarks/bench_large_eigen.py                 # p = 262,144, d = 512 (about 2 minutes)
    python benchmarks/bench_large_eigen.py --p 32768 --d 64 --out x.json   # a quick run

Writes benchmarks/results/large_eigen.json. The goal (issue 18): the first answer within
60 s and a peak under 4 GiB, where a dense p × p eigenbasis would need 512 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants (from /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def answers(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as con:
            return con.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.Error:  # not created yet, or locked by the writer
        return 0


def write_dictionary(path: Path, p: int, d: int, seed: int) -> None:
    """A rank-``d`` dictionary ``D`` ``(d, p)`` (``dict:`` files hold atoms as columns), float32, unit atoms."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    w = np.empty((p, d), np.float32)
    for lo in range(0, p, 16384):
        block = rng.standard_normal((min(16384, p - lo), d)).astype(np.float32)
        w[lo:lo + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    save_file({"D": np.ascontiguousarray(w.T)}, str(path))  # (d, p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--p", type=int, default=262_144)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--budget", type=int, default=20_000)
    ap.add_argument("--after", type=float, default=20.0, help="seconds to keep running after the first answer")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "large_eigen.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dictionary, db = tmp / "dict.safetensors", tmp / "run.db"
        t0 = time.perf_counter()
        write_dictionary(dictionary, args.p, args.d, args.seed)
        write_s = time.perf_counter() - t0
        cmd = [sys.executable, "-m", "fbloop", "run", "--target", f"dict:{dictionary}", "--design", "eigen",
               "--budget", str(args.budget), "--db", str(db), "--json"]
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        peak, first, trace, last_poll = 0, None, [], 0.0
        while proc.poll() is None:
            now = time.perf_counter() - start
            peak = max(peak, tree_rss(proc.pid))
            if now - last_poll >= 0.5:
                last_poll = now
                n = answers(db)
                trace.append({"t_s": round(now, 2), "answers": n, "rss_gib": round(peak / 2**30, 3)})
                if n and first is None:
                    first = now
            if (first is not None and now - first >= args.after) or now >= args.timeout:
                os.killpg(proc.pid, signal.SIGINT)  # the CLI saves what it has and exits
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        out, err = proc.communicate()
        final = answers(db)
        stopped_s = time.perf_counter() - start
    result = {
        "p": args.p, "d": args.d, "budget": args.budget, "command": " ".join(cmd[1:]).replace(str(tmp), "TMP"),
        "dictionary_write_s": round(write_s, 2), "first_answer_s": None if first is None else round(first, 2),
        "peak_rss_gib": round(peak / 2**30, 3), "answers_when_stopped": final, "stopped_s": round(stopped_s, 2),
        "returncode": proc.returncode, "stderr_tail": err[-600:], "trace": trace,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "omp_threads": os.environ.get("OMP_NUM_THREADS")},
        "goal": {"first_answer_s": 60, "peak_rss_gib": 4},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("p", "d", "first_answer_s", "peak_rss_gib", "answers_when_stopped",
                                             "returncode")}))


if __name__ == "__main__":
    main()
