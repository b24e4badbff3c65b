"""What the checkpoint readers share: the checkpoint folder, JSON and safetensors files, tensor checks."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import TargetFileError

# Axes: "F" is the number of features (d_sae, dict_size), "D" the activation dimension (d_in).
Layout = dict[str, tuple[str, ...]]


# ---------------------------------------------------------------- shared


def _folder(path: str | Path, weights_name: str, what: str) -> Path:
    """The checkpoint directory: ``path`` itself, or the directory of a file inside it."""
    path = Path(path)
    if not path.exists():
        raise TargetFileError(f"{path}: no such {what} directory.")
    folder = path if path.is_dir() else path.parent
    if not (folder / weights_name).is_file():
        present = sorted(p.name for p in folder.iterdir())[:12]
        raise TargetFileError(f"{folder}: missing {weights_name}; expect a {what} directory "
                              f"(found {present}).")
    return folder


def _read_json_object(file: Path) -> dict:
    if not file.is_file():
        raise TargetFileError(f"{file}: no such file.")
    try:
        doc = json.loads(file.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise TargetFileError(f"{file}: malformed JSON at line {exc.lineno}, column {exc.colno}: "
                              f"{exc.msg}.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetFileError(f"{file}: cannot read ({type(exc).__name__}: {_brief(exc)}).") from exc
    if not isinstance(doc, dict):
        raise TargetFileError(f"{file}: expect a JSON object, got {type(doc).__name__}.")
    return doc


def _int_key(file: Path, cfg: dict, key: str) -> int:
    if key not in cfg:
        raise TargetFileError(f"{file}: missing key {key!r}; the file has keys {sorted(cfg)}.")
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TargetFileError(f"{file}: {key} must be a positive integer, got {value!r}.")
    return value


def _with_safetensors(file: Path, read: Callable[[Any], np.ndarray]) -> np.ndarray:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            return read(f)
    except TargetFileError:
        raise
    except Exception as exc:  # SafetensorError: truncated header or data, not a safetensors file
        raise TargetFileError(f"{file}: cannot read safetensors ({type(exc).__name__}: {_brief(exc)}); "
                              "the file may be truncated.") from exc


def _check_shapes(file: Path, shapes: dict[str, tuple[int, ...]], layout: Layout, dims: dict[str, int],
                  names: dict[str, str], stores: str) -> None:
    """Every tensor of ``layout`` is present with the shape the decoder's dimensions imply."""
    for key, axes in layout.items():
        if key not in shapes:
            raise TargetFileError(f"{file}: missing tensor {key!r} ({stores}); "
                                  f"the file holds {sorted(shapes)}.")
        want = tuple(dims[a] for a in axes)
        if shapes[key] != want:
            raise TargetFileError(f"{file}: tensor {key!r} has shape {shapes[key]}; expect "
                                  f"({', '.join(names[a] for a in axes)}) = {want} to match the decoder.")


def _check_finite(file: Path, key: str, tensor) -> None:
    import torch

    if tensor.is_floating_point():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise TargetFileError(f"{file}: tensor {key!r} holds {bad} NaN/Inf value(s) of {tensor.numel()}.")


def _check_float(file: Path, key: str, tensor) -> None:
    """Weights must be floating point: an int8 or bool tensor is a quantised or wrong file, not atoms."""
    if not tensor.is_floating_point():
        raise TargetFileError(f"{file}: tensor {key!r} has dtype {str(tensor.dtype).removeprefix('torch.')}; "
                              "expect floating-point weights (float32, float16, bfloat16, float64).")


def _label(meta: dict, folder: Path) -> str:
    """A target's name: model, the layer as its metadata numbers it, and hook (``gpt2, layer=6, blocks.6…``)."""
    parts = [str(meta["model_name"])] if "model_name" in meta else []
    parts += [f"layer={meta['layer']}"] if "layer" in meta else []
    parts += [str(meta["hook_name"])] if "hook_name" in meta else []
    return ", ".join(parts) or folder.name


def _brief(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())  # no terminal colour codes
    return text if len(text) <= limit else text[: limit - 1] + "…"
