"""``fbloop`` — the command line. Each command parses, calls the library, prints.

- :mod:`.common`: the ``main`` group, the ``--db`` and ``--json`` options, clean failures, the design choices;
- :mod:`.running`: ``run`` and ``demo``, with the run options, the progress bar and the printout;
- :mod:`.serving`: ``app`` (the annotation app) and ``serve-oracle`` (the local LLM stand-in);
- :mod:`.batching`: ``batch export/ingest/status`` (LLM batch jobs, offline engines);
- :mod:`.annotators`: ``annotators add/owner/list/block/overlap`` (invitations, the owner's link, blocking);
- :mod:`.inspection`: ``bound``, ``target``, ``runs``, ``export``, ``sae``, ``reproduce``.

Importing this package registers every command on :func:`main`.
"""

from . import annotators, batching, inspection, running, serving  # importing them registers their commands
from .common import DEFAULT_DB, DESIGN_CHOICES, main
from .serving import app_command

__all__ = ["DEFAULT_DB", "DESIGN_CHOICES", "app_command", "main", "annotators", "batching", "inspection", "running", "serving"]
