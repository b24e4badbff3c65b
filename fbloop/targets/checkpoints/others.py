"""EleutherAI sparsify and Gemma Scope checkpoints as targets.

**sparsify** (EleutherAI/sparsify: ``sparse_coder.py`` ``SparseCoder.save_to_disk`` /
``load_from_disk``, ``config.py`` ``SparseCoderConfig``)
    One folder per hookpoint, ``<run>/layers.N/`` with ``cfg.json`` (the coder's
    config plus ``d_in``: ``num_latents`` or ``expansion_factor``, ``k``,
    ``normalize_decoder``…) and ``sae.safetensors`` with ``encoder.weight``
    ``(num_latents, d_in)``, ``encoder.bias``, ``W_dec`` ``(num_latents, d_out)``
    and ``b_dec``; transcoders add ``W_skip``. ``decode`` is ``latents @ W_dec +
    b_dec``: **rows are atoms**, as stored (no decode-time rescaling; with
    ``normalize_decoder`` training keeps them unit norm). ``<run>/config.json``,
    when present, names the model.

**Gemma Scope** (google/gemma-scope-*: ``layer_L/width_W/average_l0_K/params.npz``;
SAELens's ``gemma_2_sae_huggingface_loader``)
    A NumPy ``.npz`` with ``W_enc`` ``(d_in, d_sae)``, ``W_dec`` ``(d_sae, d_in)``,
    ``b_enc``, ``b_dec`` and ``threshold`` (JumpReLU; lower-case ``w_`` keys are
    mapped as SAELens maps them). Rows of ``W_dec`` are atoms. The layer is read
    from a ``layer_L`` folder in the path. Loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from ...errors import TargetFileError
from ..target import Target
from .common import _brief, _check_finite, _check_float, _folder, _int_key, _read_json_object, _with_safetensors
from .descriptions import _target

SPARSIFY_CFG = "cfg.json"
SPARSIFY_WEIGHTS = "sae.safetensors"
GEMMASCOPE_WEIGHTS = "params.npz"


def load_sparsify(path: str | Path, descriptions: str | Path | None = None, *,
                  force_descriptions: bool = False, explanation_model: str | None = None) -> Target:
    """Target ``Φ* = W_dec W_decᵀ`` from a sparsify hookpoint folder (``layers.N/``) or a file in it."""
    import torch

    given = Path(path)
    if given.is_dir() and not (given / SPARSIFY_WEIGHTS).is_file():
        subs = sorted(d for d in given.iterdir() if (d / SPARSIFY_WEIGHTS).is_file())
        if len(subs) == 1:
            given = subs[0]
        elif subs:
            raise TargetFileError(f"{given}: holds {len(subs)} sparsify hookpoints "
                                  f"({[d.name for d in subs][:6]}); name one, e.g. {subs[0]}.")
    folder = _folder(given, SPARSIFY_WEIGHTS, "sparsify")
    cfg_file, weights = folder / SPARSIFY_CFG, folder / SPARSIFY_WEIGHTS
    cfg = _read_json_object(cfg_file)
    d_in = _int_key(cfg_file, cfg, "d_in")

    def read(f) -> np.ndarray:
        keys = set(f.keys())
        if "W_dec" not in keys:
            raise TargetFileError(f"{weights}: missing tensor 'W_dec' (num_latents, d_out); "
                                  f"the file holds {sorted(keys)}.")
        w = f.get_tensor("W_dec")
        if w.ndim != 2:
            raise TargetFileError(f"{weights}: W_dec has shape {tuple(w.shape)}; expect (num_latents, d_out).")
        if "encoder.weight" in keys:
            enc = tuple(f.get_slice("encoder.weight").get_shape())
            if enc != (w.shape[0], d_in):
                raise TargetFileError(f"{weights}: encoder.weight has shape {enc}; expect (num_latents, d_in) = "
                                      f"{(w.shape[0], d_in)} to match W_dec and {SPARSIFY_CFG}.")
        _check_float(weights, "W_dec", w)
        _check_finite(weights, "W_dec", w)
        return w.to(torch.float64).numpy()

    w_dec = _with_safetensors(weights, read)
    p = w_dec.shape[0]
    said = cfg.get("num_latents") or (d_in * cfg["expansion_factor"] if cfg.get("expansion_factor") else None)
    if said not in (None, p):
        raise TargetFileError(f"{weights}: W_dec has {p} rows, but {SPARSIFY_CFG} implies num_latents={said}.")
    meta = {"format": "sparsify", "d": w_dec.shape[1], "p": p, "hook_name": folder.name,
            "decoder_convention": "W_dec rows as stored (sparsify decodes latents @ W_dec)"}
    match = re.search(r"layers[._](\d+)", folder.name)
    if match:
        meta["layer"] = int(match.group(1))
    run_cfg = folder.parent / "config.json"
    if run_cfg.is_file():
        model = _read_json_object(run_cfg).get("model")
        if isinstance(model, str):
            meta["model_name"] = model
    if cfg.get("k") is not None:
        meta["k"] = cfg["k"]
    label = ", ".join(str(meta[k]) for k in ("model_name", "hook_name") if k in meta)
    return _target(weights, w_dec.T, f"sparsify({label}, p={p})", folder, descriptions, meta,
                   force=force_descriptions, explanation_model=explanation_model)


def load_gemmascope(path: str | Path, descriptions: str | Path | None = None, *,
                    force_descriptions: bool = False, explanation_model: str | None = None) -> Target:
    """Target ``Φ* = W_dec W_decᵀ`` from a Gemma Scope ``params.npz`` (or its folder)."""
    given = Path(path)
    weights = given if given.is_file() else _folder(given, GEMMASCOPE_WEIGHTS, "Gemma Scope") / GEMMASCOPE_WEIGHTS
    try:
        with np.load(weights, allow_pickle=False) as data:
            arrays = {("W_" + k[2:] if k.startswith("w_") else k): data[k] for k in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise TargetFileError(f"{weights}: cannot read a NumPy .npz of arrays ({type(exc).__name__}: "
                              f"{_brief(exc)}); expect Gemma Scope's params.npz.") from exc
    if "W_dec" not in arrays:
        raise TargetFileError(f"{weights}: missing array 'W_dec' (d_sae, d_in); the file holds {sorted(arrays)}.")
    w = arrays["W_dec"]
    if w.ndim != 2:
        raise TargetFileError(f"{weights}: W_dec has shape {w.shape}; expect (d_sae, d_in).")
    if not np.issubdtype(w.dtype, np.floating):
        raise TargetFileError(f"{weights}: W_dec has dtype {w.dtype}; expect floating-point weights.")
    p, d = w.shape
    for key, shape in (("W_enc", (d, p)), ("b_enc", (p,)), ("b_dec", (d,)), ("threshold", (p,))):
        if key in arrays and arrays[key].shape != shape:
            raise TargetFileError(f"{weights}: {key} has shape {arrays[key].shape}; expect {shape} to match "
                                  f"W_dec {w.shape} (d_sae, d_in).")
    if not np.all(np.isfinite(w)):
        raise TargetFileError(f"{weights}: tensor 'W_dec' holds {int(np.sum(~np.isfinite(w)))} NaN/Inf value(s).")
    meta = {"format": "gemmascope", "architecture": "jumprelu" if "threshold" in arrays else "standard",
            "d": d, "p": p, "decoder_convention": "W_dec rows as stored"}
    for part in weights.parts:
        match = re.fullmatch(r"layer_(\d+)", part)
        if match:
            meta["layer"] = int(match.group(1))
    label = ", ".join([f"layer={meta['layer']}"] * ("layer" in meta) + [weights.parent.name])
    return _target(weights, w.astype(np.float64).T, f"gemmascope({label}, p={p})", weights.parent, descriptions,
                   meta, force=force_descriptions, explanation_model=explanation_model)
