"""What every command shares: the ``main`` group, the ``--db`` and ``--json`` options, clean failures."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from ..errors import FbloopError

DEFAULT_DB = "runs/fbloop.db"


def _fail_cleanly(fn):
    """Turn fbloop's own errors into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FbloopError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def db_option(fn):
    return click.option("--db", "db_path", default=DEFAULT_DB, show_default=True,
                        type=click.Path(dir_okay=False), help="SQLite database of runs.")(fn)


def json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")(fn)


def _open_store(db_path: str):
    from ..store import Store

    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    return Store(db_path)


@click.group()
@click.version_option(package_name="fbloop")
def main() -> None:
    """Recover a network's feature matrix Φ = DᵀD from feedback."""


# fbloop.queries.designs.DESIGNS, spelled out so that `fbloop --help` does not import numpy (a test keeps them equal)
DESIGN_CHOICES = ["eigen", "constructive", "gaussian", "sparse", "coverage", "pivot", "triplet", "closest", "rank", "odd"]


# Feature descriptions for checkpoint targets: appended to the target spec, so a run stores them.
descriptions_options = [
    click.option("--descriptions", default=None, type=click.Path(exists=True),
                 help="Neuronpedia explanations for a checkpoint target: a JSON/JSONL file (.gz too), a "
                      "batch-N.jsonl.gz, or a folder of them [default: found beside the checkpoint]."),
    click.option("--force-descriptions", is_flag=True, default=False,
                 help="Attach explanations whose modelId/layer name another SAE than the checkpoint's."),
    click.option("--explanation-model", default=None,
                 help="Of several explanations per feature, prefer this explanationModelName "
                      "[default: the highest score, then the first in file order]."),
]
