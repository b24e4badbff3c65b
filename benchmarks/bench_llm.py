"""LLM-agent throughput against the local oracle server: answers per second by batch size and concurrency.

Starts ``fbloop serve-oracle`` (a separate process, 50 ms latency per request by
default) and, for each batch size × concurrency, lets one :class:`LLMAgent`
answer a fixed number of triplet requests through the real ``openai`` client
over HTTP, timed as the loop would call it (one ``answer`` call, client set-up
included, no cache). Each cell sends ``clamp(4·concurrency, 32, 256)``
requests, so the whole grid stops by itself in well under a minute.

    python benchmarks/bench_llm.py            # writes benchmarks/results/llm_throughput.{json,png}

The ideal for a cell is ``batch · concurrency / latency``: what the agent would
reach if the client, the server and the network cost nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fbloop.agents import LLMAgent, LLMConfig
from fbloop.queries.catalogue import make_design
from fbloop.queries.designs import DesignConfig
from fbloop.targets.load import load_target

ROOT = Path(__file__).resolve().parent
TARGET = "synthetic:p=32,rank=8"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, latency_ms: float) -> subprocess.Popen:
    argv = [sys.executable, "-m", "fbloop.cli", "serve-oracle", "--target", TARGET, "--port", str(port),
            "--latency-ms", str(latency_ms)]
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


def measure(url: str, batch: int, concurrency: int, requests: int, design) -> dict:
    n = batch * requests
    queries = design.queries(0, n)
    agent = LLMAgent(LLMConfig(base_url=url, batch_size=batch, concurrency=concurrency, cache=False,
                               structured="json_schema"))  # no probe: the request count is the measure
    t0 = time.perf_counter()
    ans = agent.answer(queries)
    seconds = time.perf_counter() - t0
    lat = np.array([m["latency_s"] for m in ans.meta if m["batch_index"] == 0])
    return {"batch_size": batch, "concurrency": concurrency, "requests": requests, "answers": n,
            "ok": int(ans.ok.sum()), "seconds": round(seconds, 4), "answers_per_s": round(n / seconds, 1),
            "requests_per_s": round(requests / seconds, 1),
            "latency_p50_ms": round(1000 * float(np.median(lat)), 1),
            "latency_p95_ms": round(1000 * float(np.quantile(lat, 0.95)), 1),
            "prompt_tokens": agent.usage.prompt_tokens, "completion_tokens": agent.usage.completion_tokens}


def plot(rows: list[dict], latency_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for batch in sorted({r["batch_size"] for r in rows}):
        sub = sorted((r for r in rows if r["batch_size"] == batch), key=lambda r: r["concurrency"])
        conc = [r["concurrency"] for r in sub]
        line, = ax.plot(conc, [r["answers_per_s"] for r in sub], "o-", label=f"batch {batch}")
        ax.plot(conc, [batch * c / (latency_ms / 1000) for c in conc], ":", color=line.get_color(), alpha=0.6)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("answers / s")
    ax.set_title(f"LLM agent vs local oracle server ({latency_ms:g} ms latency)\n"
                 "dotted: ideal batch·concurrency/latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "local")
    load = [round(x, 2) for x in os.getloadavg()]
    port = free_port()
    server = start_server(port, args.latency_ms)
    url = f"http://127.0.0.1:{port}/v1"
    design = make_design(DesignConfig(name="triplet", dist="sparse", mu=0.8, s=4), load_target(TARGET), 0)
    rows = []
    try:
        LLMAgent(LLMConfig(base_url=url)).check()
        measure(url, 1, 4, 8, design)  # warm-up: imports, first connections
        print(f"{'batch':>5} {'conc':>5} {'requests':>8} {'answers':>7} {'seconds':>8} {'answers/s':>10} "
              f"{'ideal':>8} {'p50 ms':>7}")
        for batch in args.batch:
            for conc in args.concurrency:
                requests = int(np.clip(4 * conc, 32, 256))
                row = measure(url, batch, conc, requests, design)
                row["ideal_answers_per_s"] = round(batch * conc / (args.latency_ms / 1000), 1)
                rows.append(row)
                print(f"{batch:>5} {conc:>5} {requests:>8} {row['answers']:>7} {row['seconds']:>8.2f} "
                      f"{row['answers_per_s']:>10.1f} {row['ideal_answers_per_s']:>8.0f} {row['latency_p50_ms']:>7.1f}",
                      flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"benchmark": "llm_throughput", "target": TARGET, "latency_ms": args.latency_ms,
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                       "loadavg_at_start": load},  # a shared machine: other work competes for the cores
           "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}
    (args.out / "llm_throughput.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(rows, args.latency_ms, args.out / "llm_throughput.png")
    print(f"wrote {args.out / 'llm_throughput.json'} and {args.out / 'llm_throughput.png'}")


if __name__ == "__main__":
    main()
