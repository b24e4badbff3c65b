"""``fbloop annotators``: invitations for the annotation form, the owner's dashboard link, blocking, overlap."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import click

from .common import _fail_cleanly, _open_store, db_option, json_option, main

DEFAULT_URL = "http://127.0.0.1:8501"


def link(base_url: str, token: str) -> str:
    """The link that signs its holder in: ``BASE/?token=SECRET``."""
    return f"{base_url.rstrip('/')}/?{urlencode({'token': token})}"


def url_option(fn):
    return click.option("--url", "base_url", default=DEFAULT_URL, show_default=True,
                        help="Where people reach the app (`fbloop app --host/--port`), for the printed link.")(fn)


@main.group()
def annotators() -> None:
    """Invite people to experiments, issue the owner's dashboard link, block annotators."""


@annotators.command("add")
@click.argument("name")
@click.option("--run", "runs", multiple=True, required=True, help="Run the person may annotate (repeatable).")
@db_option
@url_option
@json_option
@_fail_cleanly
def add(name: str, runs: tuple[str, ...], db_path: str, base_url: str, as_json: bool) -> None:
    """Invite NAME to the runs given; prints their secret link (shown once: the store keeps only its hash)."""
    from ..agents import people as human

    with _open_store(db_path) as store:
        token = human.invite(store, name, list(runs))
    url = link(base_url, token)
    if as_json:
        click.echo(json.dumps({"name": human.normalise_name(name), "runs": list(runs), "url": url}))
    else:
        click.echo(f"{human.normalise_name(name)} may annotate {', '.join(runs)}. Their link (keep it secret; "
                   f"running this again issues a new one and the old one stops working):\n{url}")


@annotators.command("owner")
@db_option
@url_option
@click.option("--label", default="owner", show_default=True, help="A note stored beside the token's hash.")
@_fail_cleanly
def owner(db_path: str, base_url: str, label: str) -> None:
    """Issue a dashboard link for the experiments' owner (shown once: the store keeps only its hash)."""
    from ..agents import people as human

    with _open_store(db_path) as store:
        token = human.owner_token(store, label)
    click.echo(f"Dashboard link (keep it secret):\n{link(base_url, token)}")


@annotators.command("list")
@db_option
@json_option
@_fail_cleanly
def list_(db_path: str, as_json: bool) -> None:
    """Everyone invited, with their runs."""
    with _open_store(db_path) as store:
        rows = store.annotators()
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['name']}\t{r['runs'] or '-'}")
    if not rows:
        click.echo("Nobody is invited yet: fbloop annotators add NAME --run RUN.")


@annotators.command("block")
@click.argument("name")
@click.option("--run", "run_id", required=True, help="The run to block NAME on.")
@click.option("--undo", is_flag=True, help="Unblock instead.")
@db_option
@_fail_cleanly
def block(name: str, run_id: str, undo: bool, db_path: str) -> None:
    """Block NAME on a run: their answers stay stored, the learner skips them, the form asks them nothing more."""
    from ..agents import people as human

    with _open_store(db_path) as store:
        agent = human.block(store, run_id, name, blocked=not undo)
    click.echo(f"{agent} {'unblocked' if undo else 'blocked'} on {run_id}; the next `fbloop run --run-id {run_id}` "
               f"{'learns from' if undo else 'leaves out'} their answers.")


@annotators.command("overlap")
@click.argument("people", type=click.IntRange(1, 50))
@click.option("--run", "run_id", required=True, help="The run to set.")
@click.option("--lease", "lease_s", default=120.0, show_default=True, type=click.FloatRange(5, 3600),
              help="Seconds a triplet shown to someone stays reserved for them.")
@db_option
@_fail_cleanly
def overlap(people: int, run_id: str, lease_s: float, db_path: str) -> None:
    """How many different people answer each triplet of a run (attention checks: everyone)."""
    from ..agents import people as human

    with _open_store(db_path) as store:
        human.set_assignment(store, run_id, people, lease_s)
    click.echo(f"{run_id}: {people} people per triplet, leases of {lease_s:g} s.")
