"""Feature descriptions from Neuronpedia explanation exports, and the target that carries them.

**Neuronpedia explanation exports**
    The old ``/api/explanation/export`` answer is a JSON list of
    ``{"modelId", "layer", "index", "description", "explanationModelName",
    "typeName"}`` with ``index`` a numeric string; the ``neuronpedia-datasets``
    S3 batches (``explanations/batch-N.jsonl.gz``) carry the same objects one a
    line, plus ``id``, ``authorId``, ``embedding``…; a feature's API answer
    holds them in an ``explanations`` list. All three are read (``.gz`` too);
    only ``index`` and ``description`` are used.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FbloopError, TargetFileError
from ..targets import Target, from_dictionary
from .common import _brief

EXPLANATION_FILES = ("explanations.jsonl", "explanations.json")  # loaded from a checkpoint's directory


# ---------------------------------------------------------------- descriptions


def load_descriptions(path: str | Path, p: int) -> tuple[str, ...]:
    """One description per feature from a Neuronpedia explanations export; ``""`` where none.

    JSON (a list of items, or an object with an ``explanations`` list) or JSONL, optionally
    gzipped. Each item needs ``index`` (an int or numeric string in ``0…p−1``) and
    ``description``; other fields are ignored. Of several explanations for one feature the
    first non-empty one is kept.
    """
    path = Path(path)
    if not path.is_file():
        raise TargetFileError(f"{path}: no such explanations file.")
    out = [""] * p
    for where, item in _explanation_items(path, _read_text(path)):
        if not isinstance(item, dict):
            raise TargetFileError(f"{path}: {where}: expect an object with 'index' and 'description', "
                                  f"got {type(item).__name__}.")
        for key in ("index", "description"):
            if key not in item:
                raise TargetFileError(f"{path}: {where}: missing key {key!r}; "
                                      f"the item has keys {sorted(item)}.")
        index = _feature_index(path, where, item["index"])
        if not 0 <= index < p:
            raise TargetFileError(f"{path}: {where}: feature index {index} is out of range for p={p} "
                                  f"features (0…{p - 1}).")
        text = item["description"]
        if text is None:
            continue
        if not isinstance(text, str):
            raise TargetFileError(f"{path}: {where}: description must be a string, "
                                  f"got {type(text).__name__}.")
        if text.strip() and not out[index]:
            out[index] = text.strip()
    return tuple(out)


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
            meta: dict) -> Target:
    p = D.shape[1]
    if p < 2:
        raise TargetFileError(f"{file}: the dictionary has {p} feature; a target needs p ≥ 2.")
    if descriptions is None:
        descriptions = next((folder / n for n in EXPLANATION_FILES if (folder / n).is_file()), None)
    texts = load_descriptions(descriptions, p) if descriptions is not None else None
    if descriptions is not None:
        meta = {**meta, "descriptions": str(descriptions)}
    try:
        return from_dictionary(D, name=name, descriptions=texts, meta={**meta, "path": str(folder)})
    except FbloopError as exc:  # e.g. an all-zero decoder, or fewer than 2 features
        raise TargetFileError(f"{file}: {exc}") from exc
