"""fbloop's on-disk cache of results that are slow to compute and fixed by their inputs (the RFM target).

Where: ``$FBLOOP_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/fbloop``, else ``~/.cache/fbloop``.
Each entry is named by a key that hashes everything it depends on, the computing code's
own source included (:func:`source_version`), so an edit to that code makes new keys
and old entries are never read again. Writes go to a temporary file renamed into
place, so a killed process leaves no half-written entry; an entry that cannot be read
is treated as missing (and rewritten). Deleting the folder is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    """The cache folder (not created here)."""
    if os.environ.get("FBLOOP_CACHE_DIR"):
        return Path(os.environ["FBLOOP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fbloop"


def source_version(*files: str | Path) -> str:
    """A short hash of the given source files' bytes: the version of the code that computes an entry."""
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def threads() -> dict:
    """What decides how many threads BLAS splits a product over. A sum split differently rounds
    differently (an RFM fit with one thread and with two differ by ~1e-13), so an entry computed under
    one setting is not handed to a process under another: each reads back exactly what it computes."""
    return {"cpus": os.cpu_count(), **{v: os.environ.get(v) for v in THREAD_VARIABLES}}


def key(kind: str, version: str, params: dict) -> str:
    """An entry's name: ``kind-<hash of version, params and the BLAS threading>``."""
    blob = json.dumps({"version": version, "params": params, "threads": threads()}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:24]}"


def _write_atomic(path: Path, write) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError:
        return  # a read-only or missing home: the cache is an optimisation, never a failure
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def load_arrays(name: str) -> dict[str, np.ndarray] | None:
    """The arrays stored under ``name``, or None when absent or unreadable."""
    path = cache_dir() / f"{name}.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception:  # noqa: BLE001 - whatever is wrong with an entry (truncated zip, bad header), it is missing
        return None


def save_arrays(name: str, arrays: dict[str, np.ndarray]) -> None:
    _write_atomic(cache_dir() / f"{name}.npz", lambda f: np.savez(f, **arrays))


def load_json(name: str) -> dict | None:
    try:
        value = json.loads((cache_dir() / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def save_json(name: str, value: dict) -> None:
    _write_atomic(cache_dir() / f"{name}.json", lambda f: f.write(json.dumps(value).encode()))
