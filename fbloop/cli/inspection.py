"""The commands around the runs: ``bound``, ``target``, ``runs``, ``export``, ``sae``, ``reproduce``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import DESIGN_CHOICES, _fail_cleanly, _open_store, db_option, descriptions_options, json_option, main
from .progress import spinner

# ---------------------------------------------------------------- inspection


@main.command()
@click.option("--design", default="eigen", show_default=True,
              type=click.Choice(DESIGN_CHOICES), help="The query design whose pair count to give.")
@click.option("--p", "p", type=int, default=None, help="Number of features.")
@click.option("--rank", type=int, default=None, help="Rank of Φ* [default: p].")
@click.option("--target", default=None, help="Read p and rank from a target spec instead.")
@json_option
@_fail_cleanly
def bound(design: str, p: int | None, rank: int | None, target: str | None, as_json: bool) -> None:
    """The pairs a design needs for (p, r), beside the full-rank lower bound P − 1."""
    from ..queries.catalogue import bound as design_bound
    from ..targets.load import load_target

    if target is not None:
        with spinner(f"loading target {target}", quiet=as_json):
            t = load_target(target)
            p, rank = t.p, t.rank
    if p is None:
        raise click.UsageError("Give --p (and --rank) or --target.")
    info = design_bound(design, p, rank or p)
    if as_json:
        click.echo(json.dumps(info))
    else:
        pairs = info["pairs"] if info["pairs"] is not None else "no closed form (sampling design)"
        click.echo(f"{design}: p={p}, r={info['r']}: {pairs} pairs; "
                   f"any design needs ≥ {info['full_rank_lower_bound']} for a full-rank Φ*.")


def _with_options(fn, options):
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command()
@click.argument("spec")
@click.option("--save", type=click.Path(dir_okay=False), default=None,
              help="Write the dictionary D (.npy or .safetensors).")
@lambda fn: _with_options(fn, descriptions_options)
@json_option
@_fail_cleanly
def target(spec: str, save: str | None, descriptions: str | None, force_descriptions: bool,
           explanation_model: str | None, as_json: bool) -> None:
    """Inspect a target: p, rank, leading eigenvalues, and for checkpoints the metadata read and
    the decoder convention used (which atoms Φ* is built from)."""
    from ..targets.load import load_target, save_target, with_descriptions

    with spinner(f"loading target {spec}", quiet=as_json):
        t = load_target(with_descriptions(spec, descriptions, force_descriptions, explanation_model))
        info = t.summary()
    if save:
        save_target(t, save)
        info["saved"] = save
    click.echo(json.dumps(info) if as_json else "\n".join(f"{k}: {v}" for k, v in info.items()))


def run_state(row: dict) -> str:
    """A run's status as a user needs it: ``running`` only while the process that set it is alive.

    A run whose process was killed stays ``running`` in the store; on the host that ran it,
    a dead pid shows it as ``stopped`` (resume it with the same command and ``--run-id``).
    On another host the stored status is shown as it is.
    """
    import os
    import socket

    if row["status"] != "running" or row.get("owner_pid") is None or row.get("owner_host") != socket.gethostname():
        return row["status"]
    try:
        os.kill(row["owner_pid"], 0)
    except ProcessLookupError:
        return "stopped"
    except PermissionError:  # alive, another user's
        pass
    return "running"


def _require_db(db_path: str) -> None:
    """Commands that read a database refuse a path where there is none (a typo must not create one)."""
    if not Path(db_path).exists():
        raise click.UsageError(f"No database at {db_path}.")


@main.command()
@db_option
@json_option
@_fail_cleanly
def runs(db_path: str, as_json: bool) -> None:
    """List the runs in a database: status, target, agent, answers, latest PCC."""
    _require_db(db_path)
    with _open_store(db_path) as store:
        rows = store.runs()
    for r in rows:
        r["state"] = run_state(r)
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo(f"No runs in {db_path}.")
        return
    head = f"{'run':<36} {'status':<8} {'kind':<8} {'target':<28} {'agent':<7} {'p':>6} {'answers':>17} {'pcc':>9}"
    click.echo(head)
    for r in rows:
        pcc = f"{r['pcc']:.6f}" if r["pcc"] is not None else "—"
        target = (r["target"] or "—")[:28]
        click.echo(f"{r['id']:<36} {r['state']:<8} {r['kind']:<8} {target:<28} {r['agent'] or '—':<7} {r['p']:>6} "
                   f"{str(r['answers']) + '/' + str(r['budget']):>17} {pcc:>9}")
    stopped = [r["id"] for r in rows if r["state"] == "stopped"]
    if stopped:
        click.echo(f"\n{len(stopped)} run(s) stopped before finishing (their process is gone). Resume one with the "
                   f"command that started it plus --run-id, e.g. --run-id {stopped[-1]}: no answer is lost or "
                   "asked twice.")


@main.command()
@click.argument("run_id")
@db_option
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="answers.csv, .jsonl, .parquet, or .npz (cblearn triplets); a .meta.json sidecar goes beside it.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl", "parquet", "cblearn"]), default=None,
              help="Default: from the file's suffix.")
@click.option("--factor", "factor_out", default=None, type=click.Path(dir_okay=False),
              help="Write the learned factor U (p, r) as safetensors, with Φ̂ = U Uᵀ when p is small.")
@click.option("--as-saelens", "saelens_out", default=None, type=click.Path(file_okay=False),
              help="Write the learned Φ̂ as a SAELens directory (W_dec = U, d_in = r, d_sae = p).")
@_fail_cleanly
def export(run_id: str, db_path: str, out: str | None, fmt: str | None, factor_out: str | None,
           saelens_out: str | None) -> None:
    """Export a run's queries and answers (CSV, JSONL, Parquet, cblearn), and its learned factor.

    Each row says its basis (feature or eigen), whether it was held out, its agent and
    attempt; the sidecar <out>.meta.json holds the run's design and anchor.
    """
    from ..store.export import export_factor, export_factor_saelens

    _require_db(db_path)
    if out is None and factor_out is None and saelens_out is None:
        raise click.UsageError("Give --out, --factor or --as-saelens.")
    with _open_store(db_path) as store:
        if out is not None:
            n = store.export(run_id, out, fmt)
            click.echo(f"wrote {n} answers to {out} (run header in {out}.meta.json)")
        if factor_out is not None:
            info = export_factor(store, run_id, factor_out)
            click.echo(f"wrote U {tuple(info['U'])}{' and Φ̂' if info['phi_hat'] else ''} to {factor_out}")
        if saelens_out is not None:
            info = export_factor_saelens(store, run_id, saelens_out)
            click.echo(f"wrote a SAELens dictionary (d_in={info['d_in']}, d_sae={info['d_sae']}) to {saelens_out}")


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for the SAELens checkpoint.")
@click.option("--layer", default=3, show_default=True, type=int,
              help="MiniLM hidden_states[L] (0–6): 0 = embeddings, L = output of block L (1-based), which "
                   "HF names encoder.layer.{L-1}; the target's name says layer=L.")
@click.option("--tokens", default=50_000, show_default=True, type=int, help="Tokens of stdlib docstrings.")
@click.option("--features", default=1024, show_default=True, type=int, help="Dictionary size p.")
@click.option("--k", default=32, show_default=True, type=int, help="TopK: active features per token.")
@click.option("--steps", default=1000, show_default=True, type=int,
              help="Adam steps of SAE training (1000 reach ~85% variance explained at the defaults).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the token sample and the training.")
@_fail_cleanly
def sae(out: str, layer: int, tokens: int, features: int, k: int, steps: int, seed: int) -> None:
    """Train a TopK SAE on a real transformer's activations (MiniLM, offline) and save it as a target."""
    from ..targets import sae as sae_mod

    target = sae_mod.build_target(
        sae_mod.ActivationConfig(layer=layer, n_tokens=tokens, seed=seed),
        sae_mod.SAEConfig(n_features=features, k=k, steps=steps, seed=seed), out)
    info = target.summary()
    click.echo(f"saved {out} (p={info['p']}, rank={info['rank']}); use it with --target saelens:{out}")


@main.command()
@click.argument("figure", type=click.Choice(["fig1", "fig2"]))
@click.option("--seeds", default=3, show_default=True, type=int, help="Seeds per design and budget.")
@click.option("--db", "db_path", default=None, type=click.Path(dir_okay=False),
              help="Keep the runs in this database [default: a temporary one].")
@json_option
@_fail_cleanly
def reproduce(figure: str, seeds: int, db_path: str | None, as_json: bool) -> None:
    """The paper's Figure 1 or 2 (RFM target): fbloop's MSE beside the ground truth and the paper."""
    from ..loop import reproduce as rep

    rows = rep.reproduce(figure, seeds=seeds, db_path=db_path, progress=not as_json)
    if as_json:
        click.echo(json.dumps(rows))
    else:
        click.echo(rep.format_table(figure, rows))
