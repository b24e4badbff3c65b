"""Feature descriptions from Neuronpedia explanation exports, and the target that carries them.

**Neuronpedia explanation exports**
    What Neuronpedia serves now are the ``neuronpedia-datasets`` batches
    ``v1/<model>/<sae>/explanations/batch-N.jsonl.gz``: one record a line with
    ``modelId``, ``layer`` (the SAE id, e.g. ``3-res-tiny``), ``index`` (a numeric
    string), ``description``, ``explanationModelName``, ``typeName``, ``authorId``,
    scores, ``createdAt``. The old ``/api/explanation/export`` answer is a JSON list
    of the same objects; a feature's API answer holds them in an ``explanations``
    list. All are read (``.gz`` too), from a file or a folder of them.

Which files: ``--descriptions`` names a file or folder; without one, a checkpoint
uses ``explanations.jsonl`` / ``explanations.json`` beside its weights, else the
``batch-*.jsonl(.gz)`` files beside it or in an ``explanations/`` folder there.

Which SAE: records carrying ``modelId`` and ``layer`` must name the checkpoint's
Neuronpedia SAE (``neuronpedia_id = "<modelId>/<layer>"`` in its metadata) and
must all name one SAE; otherwise loading fails unless forced.

Which explanation: of several for one feature, an ``explanation_model`` given by
the caller wins (exact ``explanationModelName``); then the highest score (a
numeric ``score``, or the largest number in ``scores`` / their ``value``); then the
first in file order.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import FbloopError, TargetFileError
from ..target import Target, from_dictionary
from .common import _brief

EXPLANATION_FILES = ("explanations.jsonl", "explanations.json")  # loaded from a checkpoint's directory
_BATCH_GLOBS = ("batch-*.jsonl.gz", "batch-*.jsonl")


# ---------------------------------------------------------------- descriptions


def load_descriptions(path: str | Path, p: int, *, expect_sae: str | None = None, force: bool = False,
                      explanation_model: str | None = None) -> tuple[str, ...]:
    """One description per feature from Neuronpedia explanations (a file or a folder); ``""`` where none.

    JSON (a list of items, or an object with an ``explanations`` list) or JSONL, optionally
    gzipped; a folder contributes its ``*.json``, ``*.jsonl`` and ``*.gz`` files, in name order.
    Each item needs ``index`` (an int or numeric string in ``0…p−1``) and ``description``.
    ``expect_sae`` (``"<modelId>/<layer>"``) is checked against the records' ``modelId`` /
    ``layer`` unless ``force``; see the module docstring for how one of several is chosen.
    """
    path = Path(path)
    files = _files(path)
    best: list[tuple[tuple, str] | None] = [None] * p
    saes: dict[str, str] = {}  # "<modelId>/<layer>" → the first file naming it
    order = 0
    for file in files:
        for where, item in _explanation_items(file, _read_text(file)):
            if not isinstance(item, dict):
                raise TargetFileError(f"{file}: {where}: expect an object with 'index' and 'description', "
                                      f"got {type(item).__name__}.")
            for key in ("index", "description"):
                if key not in item:
                    raise TargetFileError(f"{file}: {where}: missing key {key!r}; "
                                          f"the item has keys {sorted(item)}.")
            if item.get("modelId") is not None and item.get("layer") is not None:
                saes.setdefault(f"{item['modelId']}/{item['layer']}", f"{file}: {where}")
            index = _feature_index(file, where, item["index"])
            if not 0 <= index < p:
                raise TargetFileError(f"{file}: {where}: feature index {index} is out of range for p={p} "
                                      f"features (0…{p - 1}).")
            text = item["description"]
            if text is None:
                continue
            if not isinstance(text, str):
                raise TargetFileError(f"{file}: {where}: description must be a string, "
                                      f"got {type(text).__name__}.")
            if not text.strip():
                continue
            order += 1
            rank = (explanation_model is not None and item.get("explanationModelName") == explanation_model,
                    _score(item), -order)
            if best[index] is None or rank > best[index][0]:
                best[index] = (rank, text.strip())
    if not force:
        _check_sae(path, saes, expect_sae)
    return tuple("" if b is None else b[1] for b in best)


def _check_sae(path: Path, saes: dict[str, str], expect: str | None) -> None:
    if len(saes) > 1:
        named = "; ".join(f"{sae} (first at {where})" for sae, where in list(saes.items())[:4])
        raise TargetFileError(f"{path}: the explanations name {len(saes)} SAEs ({named}); expect one. "
                              "Keep one SAE's files, or force it (--force-descriptions).")
    if expect is not None and saes:
        (found, where), = saes.items()
        if found != expect:
            raise TargetFileError(f"{path}: the explanations are for {found!r} ({where}), but the checkpoint is "
                                  f"Neuronpedia SAE {expect!r} (its neuronpedia_id); give that SAE's "
                                  "explanations, or force it (--force-descriptions).")


def _score(item: dict) -> float:
    """An explanation's score: ``score``, or the largest number in ``scores`` (or their ``value``s)."""
    values = []
    for v in [item.get("score"), *(item.get("scores") if isinstance(item.get("scores"), list) else [])]:
        if isinstance(v, dict):
            v = v.get("value", v.get("score"))
        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            values.append(float(v))
    return max(values, default=float("-inf"))


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        batches = sorted({f for g in _BATCH_GLOBS for f in path.glob(g)})
        files = batches or sorted(f for f in path.iterdir() if f.is_file()
                                  and f.name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")))
        if files:
            return files
        raise TargetFileError(f"{path}: no explanation files (*.json, *.jsonl, *.gz) in this folder.")
    raise TargetFileError(f"{path}: no such explanations file or folder.")


def find_descriptions(folder: Path) -> Path | None:
    """The explanations beside a checkpoint: a named file, else Neuronpedia batch files."""
    for name in EXPLANATION_FILES:
        if (folder / name).is_file():
            return folder / name
    for where in (folder / "explanations", folder):
        if where.is_dir() and any(f for g in _BATCH_GLOBS for f in where.glob(g)):
            return where  # a folder: _files reads its batch files only
    return None


def _explanation_items(path: Path, text: str) -> list[tuple[str, Any]]:
    if path.name.removesuffix(".gz").endswith(".jsonl"):
        return _jsonl_items(path, text)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object a line, under a .json name
            return _jsonl_items(path, text)
        raise TargetFileError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: "
                              f"{exc.msg}.") from exc
    if isinstance(doc, dict) and isinstance(doc.get("explanations"), list):
        doc = doc["explanations"]
    if not isinstance(doc, list):
        got = f"an object with keys {sorted(doc)[:8]}" if isinstance(doc, dict) else type(doc).__name__
        raise TargetFileError(f"{path}: expect a list of explanations or an object with an "
                              f"'explanations' list, got {got}.")
    return [(f"item [{i}]", item) for i, item in enumerate(doc)]


def _jsonl_items(path: Path, text: str) -> list[tuple[str, Any]]:
    items = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise TargetFileError(f"{path}: line {lineno}: malformed JSON ({exc.msg} at column "
                                  f"{exc.colno}).") from exc
    return items


def _feature_index(path: Path, where: str, value: Any) -> int:
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value) if not isinstance(value, int) else value
            if isinstance(number, int) or number.is_integer():
                return int(number)
        except ValueError:
            pass
    raise TargetFileError(f"{path}: {where}: index must be an integer or a numeric string, got {value!r}.")


def _read_text(path: Path) -> str:
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return data.decode("utf-8-sig")
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # gzip.BadGzipFile is an OSError
        raise TargetFileError(f"{path}: cannot read as UTF-8 text "
                              f"({type(exc).__name__}: {_brief(exc)}).") from exc


# ---------------------------------------------------------------- the target


def _target(file: Path, D: np.ndarray, name: str, folder: Path, descriptions: str | Path | None,
            meta: dict, *, force: bool = False, explanation_model: str | None = None) -> Target:
    p = D.shape[1]
    if p < 2:
        raise TargetFileError(f"{file}: the dictionary has {p} feature; a target needs p ≥ 2.")
    if descriptions is None:
        descriptions = find_descriptions(folder)
    texts = None
    if descriptions is not None:
        texts = load_descriptions(descriptions, p, expect_sae=meta.get("neuronpedia_id"), force=force,
                                  explanation_model=explanation_model)
        meta = {**meta, "descriptions": str(descriptions), "described": sum(1 for t in texts if t)}
    try:
        return from_dictionary(D, name=name, descriptions=texts, meta={**meta, "path": str(folder)})
    except FbloopError as exc:  # e.g. an all-zero decoder, or fewer than 2 features
        raise TargetFileError(f"{file}: {exc}") from exc
