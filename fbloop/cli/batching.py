"""``fbloop batch export/ingest/status``: an LLM run's batch requests for an offline engine, its results back.

A run made with ``--llm-mode offline`` (or ``batch``) records what it asks. ``export`` writes the requests
with no answer yet in OpenAI's batch input format (``vllm run-batch -i FILE``); ``ingest`` stores an
engine's (or a provider's) output lines through the LLM agent's strict parser; ``status`` lists the
run's batches. Run the run's command again (or keep it up with ``--watch``) to learn from what came in.
"""

from __future__ import annotations

import json

import click

from .common import _fail_cleanly, _open_store, db_option, json_option, main


def _agent(store, run_id: str):
    """The run's LLM agent as its config built it (no endpoint contacted, no key needed)."""
    from ..agents.batch import batch_llm
    from ..errors import ConfigError
    from ..loop import RunConfig
    from ..queries.tuples import candidates
    from ..targets.load import load_target

    config = RunConfig.from_dict(store.require_run(run_id)["config"])
    if config.agent != "llm" or config.llm is None:
        raise ConfigError(f"Run {run_id!r} has agent {config.agent!r}; batch files are for --agent llm runs.")
    kind = config.design.name
    llm = batch_llm(config.llm, kind, candidates(config.design) if kind in ("closest", "rank") else None,
                    load_target(config.target).descriptions)
    llm.offline = True
    return llm


@main.group()
def batch() -> None:
    """LLM batch jobs: export pending requests for an offline engine, ingest results, list batches."""


@batch.command("export")
@click.argument("run_id")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="The JSONL file to write.")
@db_option
@json_option
@_fail_cleanly
def export_command(run_id: str, out: str, db_path: str, as_json: bool) -> None:
    """Write RUN_ID's requests that have no answer yet as OpenAI batch input lines (vllm run-batch -i)."""
    from ..agents.batch import export_pending

    with _open_store(db_path) as store:
        info = export_pending(_agent(store, run_id), store, run_id, out)
    if as_json:
        click.echo(json.dumps({"run_id": run_id, "out": out, **info}))
    else:
        click.echo(f"{out}: {info['requests']} requests ({info['answers']} answers pending), {info['bytes']:,} bytes")


@batch.command("ingest")
@click.argument("run_id")
@click.argument("results", type=click.Path(exists=True, dir_okay=False))
@db_option
@json_option
@_fail_cleanly
def ingest_command(run_id: str, results: str, db_path: str, as_json: bool) -> None:
    """Store the result lines in RESULTS (an engine's or a provider's batch output) as RUN_ID's answers."""
    from ..agents.batch import Ingester

    with _open_store(db_path) as store:
        llm = _agent(store, run_id)
        with open(results, "rb") as fh:
            report = Ingester(llm, store, run_id).ingest(fh)
    out = report.to_dict()
    if as_json:
        click.echo(json.dumps({"run_id": run_id, **out}))
        return
    click.echo(f"{results}: {out['lines']} lines, {out['stored']} answers stored, {out['repeated']} stored "
               f"before, {out['failed']} failed requests (stored invalid; asked again when the run resumes), "
               f"{out['unmatched']} matching no asked request, {out['unreadable']} unreadable")
    for ex in out["examples"]:
        click.echo(f"  not stored: {ex}")


@batch.command("status")
@click.argument("run_id")
@db_option
@json_option
@_fail_cleanly
def status_command(run_id: str, db_path: str, as_json: bool) -> None:
    """List RUN_ID's batches: state, provider status, ids, requests."""
    with _open_store(db_path) as store:
        store.require_run(run_id)
        rows = store.batches(run_id)
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['id']:>5} {r['state']:<10} {r['provider_status'] or '-':<12} {r['batch_id'] or '-':<32} "
                   f"{r['requests']:>7} requests {r['n_asks']:>7} answers asked")
    if not rows:
        click.echo(f"Run {run_id!r} has no batches.")
