"""A fixed set of runs whose answers and PCC a refactor of the loop or the agents must not change.

    python scripts/fixed_runs.py --out before.json      # on the old code
    python scripts/fixed_runs.py --out after.json       # on the new code
    python scripts/fixed_runs.py --compare before.json after.json

Each run goes through the real CLI (``python -m fbloop run … --json``) in a fresh database, one thread,
the same seeds: the simulated oracle exact and noisy, the LLM agent over HTTP (``fbloop serve-oracle``
on 127.0.0.1, both candidate orders), an agent pool, people (queued, answered through
:func:`fbloop.agents.people.submit` by simulated annotators reading ``Φ*``, then learned from), bisection, the
pivot design and an active strategy. For each it records the final PCC, the answer count and a SHA-256
of every stored answer ``(seq, agent, attempt, status, value)``; ``--compare`` says which differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": "fixed-runs-local-key"}

SMALL = ["--target", "synthetic:p=12,rank=3", "--seed", "3"]
RUNS: dict[str, list[str]] = {
    "oracle-exact": SMALL + ["--design", "sparse", "--budget", "600", "--learner", "gradient"],
    "oracle-noisy": SMALL + ["--design", "triplet", "--noise", "logistic", "--noise-temperature", "0.1",
                             "--budget", "600"],
    "llm-http": SMALL + ["--design", "triplet", "--agent", "llm", "--budget", "120", "--batch-size", "4",
                         "--order-swap", "--model", "fbloop-oracle"],
    "pool": SMALL + ["--design", "triplet", "--budget", "500", "--agent", "pool",
                     "--member", "good:oracle,cost=1,reference", "--member", "cheap:oracle,noise=flip,flip=0.2,cost=0.01"],
    "people": SMALL + ["--design", "triplet", "--agent", "human", "--budget", "200", "--check-rate", "0.1"],
    "bisection": ["--target", "rfm", "--design", "eigen", "--bisection", "0.01", "--seed", "3"],
    "pivot": ["--target", "synthetic:p=60,rank=4", "--design", "pivot", "--seed", "3"],
    "active": SMALL + ["--design", "triplet", "--active", "ensemble", "--noise", "logistic", "--budget", "400"],
}


def cli(args: list[str], db: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "fbloop", "run", *args, "--db", str(db), "--run-id", "fixed",
                           "--json"], capture_output=True, text=True, env=ENV, cwd=db.parent, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"fbloop run {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def answer_people(db: Path, target: str, annotators: int = 3) -> int:
    """Simulated annotators, in turn, answer every triplet the queue offers them, exactly from ``Φ*``."""
    sys.path.insert(0, str(ROOT))
    from fbloop.agents import people as human
    from fbloop.store import Store
    from fbloop.targets.load import load_target

    factor = load_target(target).factor
    n, busy = 0, True
    with Store(str(db)) as store:
        while busy:
            busy = False
            for k in range(annotators):
                q = human.next_query(store, "fixed", f"annotator{k}")
                if q is None:
                    continue
                busy = True
                batch = store.load_queries("fixed", [q.seq])
                a = batch.a.to_dense()
                d_ab, d_ac = (float((((x.to_dense() - a) @ factor) ** 2).sum()) for x in (batch.b, batch.c))
                choice = "first" if d_ab < d_ac else "second" if d_ac < d_ab else "equal"
                n += human.submit(store, "fixed", q.seq, f"annotator{k}", choice, 1000.0, q.token)
    return n


def answers_digest(db: Path) -> tuple[int, str]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT seq, agent, attempt, status, value FROM answers WHERE run_id = 'fixed' "
                           "ORDER BY seq, agent, attempt").fetchall()
    finally:
        con.close()
    h = hashlib.sha256()
    for seq, agent, attempt, status, value in rows:
        h.update(f"{seq}|{agent}|{attempt}|{status}|{'' if value is None else repr(float(value))}\n".encode())
    return len(rows), h.hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_all(names: list[str]) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            t0 = time.perf_counter()
            db = Path(tmp) / f"{name}.db"
            args = list(RUNS[name])
            server = None
            if name == "llm-http":
                port = free_port()
                server = subprocess.Popen([sys.executable, "-m", "fbloop", "serve-oracle", "--target",
                                           "synthetic:p=12,rank=3", "--port", str(port), "--seed", "3"],
                                          env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(3)
                args += ["--base-url", f"http://127.0.0.1:{port}/v1"]
            try:
                summary = cli(args, db)
                if name == "people":  # people answer in the app; the same command again learns from them
                    answer_people(db, "synthetic:p=12,rank=3")
                    summary = cli(args, db)
            finally:
                if server is not None:
                    server.terminate()
                    server.wait(timeout=30)
            n, digest = answers_digest(db)
            out[name] = {"pcc": summary.get("pcc"), "answers": summary.get("answers"), "stored": n,
                         "digest": digest, "seconds": round(time.perf_counter() - t0, 1)}
            print(f"{name:<14} PCC {out[name]['pcc']}  stored {n}  {digest[:16]}  {out[name]['seconds']} s",
                  flush=True)
    return out


def compare(a: dict, b: dict) -> int:
    bad = 0
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name), b.get(name)
        if x is None or y is None:
            print(f"{name}: only in {'the first' if y is None else 'the second'}")
            bad += 1
            continue
        same_answers = x["digest"] == y["digest"] and x["stored"] == y["stored"]
        same_pcc = (x["pcc"] is None and y["pcc"] is None) or (
            x["pcc"] is not None and y["pcc"] is not None and abs(x["pcc"] - y["pcc"]) <= 1e-9)
        print(f"{name:<14} answers {'same' if same_answers else 'DIFFER'} ({x['stored']} / {y['stored']}), "
              f"PCC {x['pcc']} / {y['pcc']} {'same' if same_pcc else 'DIFFER'}")
        bad += not (same_answers and same_pcc)
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="Write the runs' figures here (JSON).")
    ap.add_argument("--only", nargs="*", choices=list(RUNS), help="A subset of the runs.")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = ap.parse_args()
    if args.compare:
        sys.exit(1 if compare(*(json.loads(p.read_text()) for p in args.compare)) else 0)
    result = run_all(args.only or list(RUNS))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
