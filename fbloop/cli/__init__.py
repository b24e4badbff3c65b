"""``fbloop`` — the command line. Each command parses, calls the library, prints.

- :mod:`.common`: the ``main`` group, the ``--db`` and ``--json`` options, clean failures, the design choices;
- :mod:`.running`: ``run`` and ``demo``, with the run options, the progress bar and the printout;
- :mod:`.serving`: ``app`` (the annotation app) and ``serve-oracle`` (the local LLM stand-in);
- :mod:`.inspection`: ``bound``, ``target``, ``runs``, ``export``, ``sae``, ``reproduce``.

Importing this package registers every command on :func:`main`.
"""

from .common import DEFAULT_DB, DESIGN_CHOICES, _fail_cleanly, _open_store, db_option, json_option, main
from .running import (_active_config, _llm_config, _print_human, _print_queue, _print_result, _progress_bar,
                      _rates, _run_config, demo, execute_run, run, run_options)
from .serving import app, app_command, serve_oracle
from .inspection import bound, export, reproduce, runs, sae, target

__all__ = [
    "DEFAULT_DB", "DESIGN_CHOICES", "_fail_cleanly", "_open_store", "db_option", "json_option", "main",
    "_active_config", "_llm_config", "_print_human", "_print_queue", "_print_result", "_progress_bar", "_rates",
    "_run_config", "demo", "execute_run", "run", "run_options",
    "app", "app_command", "serve_oracle",
    "bound", "export", "reproduce", "runs", "sae", "target",
]
