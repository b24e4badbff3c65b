"""SAELens checkpoints: read one as a target, write one from a trained SAE.

**SAELens** (jbloomAus/SAELens: ``constants.py``; ``saes/sae.py`` ``save_model``,
``initialize_weights``, ``SAEMetadata``; ``loading/pretrained_sae_loaders.py``
``sae_lens_disk_loader``, ``handle_pre_6_0_config``; ``saes/{standard,topk,
batchtopk,matryoshka_batchtopk,jumprelu,gated}_sae.py``)
    A directory with ``cfg.json`` and ``sae_weights.safetensors`` (a flat state
    dict, no metadata). ``W_dec`` is ``(d_sae, d_in)``: **rows are atoms**, so
    ``D = W_decᵀ`` (``d_in × d_sae``). ``W_enc`` is ``(d_in, d_sae)``, ``b_dec``
    ``(d_in,)``. By ``cfg["architecture"]`` ("standard" when absent, as SAELens
    < 6 assumed): standard, topk, batchtopk and matryoshka_batchtopk add
    ``b_enc`` ``(d_sae,)``; jumprelu adds ``b_enc`` and ``threshold``
    ``(d_sae,)`` (batchtopk and matryoshka SAEs are saved as jumprelu for
    inference); gated has ``b_gate``, ``b_mag``, ``r_mag`` ``(d_sae,)`` and no
    ``b_enc``. ``d_in`` and ``d_sae`` are top-level keys. Model and hook sit in
    ``cfg["meta"]`` (``model_name``, ``hook_name``, ``hook_layer``,
    ``neuronpedia_id``) since SAELens 6 and at the top level before, where old
    files spell them ``hook_point`` / ``hook_point_layer``; both are read. An
    optional ``sparsity.safetensors`` beside them is not needed.

:func:`save_saelens` writes the SAELens layout (and ``explanations.jsonl``), so a
trained SAE can be read back here, by SAELens, or shared.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, NonFiniteError, ShapeError, TargetFileError
from ..targets import Target
from .common import Layout, _check_finite, _check_shapes, _folder, _int_key, _read_json_object, _with_safetensors
from .descriptions import _target

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"

_SAELENS_ENCODERS: dict[str, Layout] = {
    "standard": {"W_enc": ("D", "F"), "b_enc": ("F",)},
    "topk": {"W_enc": ("D", "F"), "b_enc": ("F",)},
    "batchtopk": {"W_enc": ("D", "F"), "b_enc": ("F",)},
    "matryoshka_batchtopk": {"W_enc": ("D", "F"), "b_enc": ("F",)},
    "jumprelu": {"W_enc": ("D", "F"), "b_enc": ("F",), "threshold": ("F",)},
    "gated": {"W_enc": ("D", "F"), "b_gate": ("F",), "b_mag": ("F",), "r_mag": ("F",)},
}
_SAELENS_NAMES = {"F": "d_sae", "D": "d_in"}
# Fields of SAELens's SAEMetadata: what cfg.json's "meta" may hold.
_SAELENS_META = ("model_name", "hook_name", "model_class_name", "hook_layer", "hook_head_index",
                 "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens",
                 "neuronpedia_id", "context_size", "seqpos_slice", "dataset_path",
                 "sae_lens_version", "sae_lens_training_version")


# ---------------------------------------------------------------- SAELens


def load_saelens(path: str | Path, descriptions: str | Path | None = None) -> Target:
    """Target ``Φ* = DᵀD`` from a SAELens directory (or a file inside it); ``D = W_decᵀ``.

    ``descriptions`` names an explanations file; without one, ``explanations.jsonl``
    or ``explanations.json`` in the directory is used when present.
    """
    import torch

    folder = _folder(path, SAELENS_WEIGHTS, "SAELens")
    cfg_file, weights = folder / SAELENS_CFG, folder / SAELENS_WEIGHTS
    cfg = _read_json_object(cfg_file)
    d_in, d_sae = _int_key(cfg_file, cfg, "d_in"), _int_key(cfg_file, cfg, "d_sae")
    arch = cfg.get("architecture") or "standard"
    if arch not in _SAELENS_ENCODERS:
        raise TargetFileError(f"{cfg_file}: unknown architecture {arch!r}; expect one of "
                              f"{list(_SAELENS_ENCODERS)}.")
    layout = {"W_dec": ("F", "D"), "b_dec": ("D",), **_SAELENS_ENCODERS[arch]}

    def read(f) -> np.ndarray:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        if "W_dec" not in shapes:
            raise TargetFileError(f"{weights}: missing tensor 'W_dec'; the file holds {sorted(shapes)}.")
        if shapes["W_dec"] != (d_sae, d_in):
            raise TargetFileError(f"{weights}: W_dec has shape {shapes['W_dec']}, but {SAELENS_CFG} says "
                                  f"d_sae={d_sae}, d_in={d_in}: expect (d_sae, d_in) = ({d_sae}, {d_in}).")
        _check_shapes(weights, shapes, layout, {"F": d_sae, "D": d_in}, _SAELENS_NAMES,
                      f"architecture {arch!r} stores {list(layout)}")
        for key in layout:  # one tensor at a time: a real W_enc is hundreds of MB
            _check_finite(weights, key, f.get_tensor(key))
        return f.get_tensor("W_dec").to(torch.float64).numpy()  # (d_sae, d_in)

    w_dec = _with_safetensors(weights, read)
    meta = _saelens_meta(cfg)
    label = " ".join(str(meta[k]) for k in ("model_name", "hook_name") if k in meta) or folder.name
    return _target(weights, w_dec.T, f"saelens({label}, p={d_sae})", folder, descriptions,
                   {"format": "saelens", "architecture": arch, "d": d_in, "p": d_sae, **meta})


def _saelens_meta(cfg: dict) -> dict[str, Any]:
    """Model, hook, layer and Neuronpedia id: ``cfg["meta"]`` (SAELens ≥ 6) or top level (older)."""
    nested = cfg.get("meta") if isinstance(cfg.get("meta"), dict) else {}
    found = {}
    for out, keys in (("model_name", ("model_name",)), ("hook_name", ("hook_name", "hook_point")),
                      ("layer", ("hook_layer", "hook_point_layer")), ("neuronpedia_id", ("neuronpedia_id",))):
        value = next((src[k] for src in (nested, cfg) for k in keys if src.get(k) is not None), None)
        if value is not None:
            found[out] = value
    return found


def save_saelens(path: str | Path, W_enc, b_enc, W_dec, b_dec, cfg: dict,
                 descriptions: dict[int, str] | None = None, *, extra: dict | None = None) -> None:
    """Write a SAELens directory: ``cfg.json``, ``sae_weights.safetensors``, ``explanations.jsonl``.

    Shapes: ``W_enc (d_in, d_sae)``, ``b_enc (d_sae,)``, ``W_dec (d_sae, d_in)``, ``b_dec (d_in,)``;
    numpy arrays or torch tensors, stored as float32. ``extra`` adds tensors an architecture
    needs (``{"threshold": ...}`` for ``cfg["architecture"] = "jumprelu"``).

    ``cfg`` keys go to the top level of ``cfg.json`` beside SAELens's defaults
    (``architecture="standard"``, ``dtype="float32"``, ``device="cpu"``,
    ``apply_b_dec_to_input=True``, ``normalize_activations="none"``); the metadata keys
    (``model_name``, ``hook_name``, ``hook_layer``…, or a ``meta`` dict) are written both to
    ``meta``, where SAELens ≥ 6 reads them, and to the top level, where older versions did.
    ``descriptions`` ({feature index: text}) become ``explanations.jsonl`` in Neuronpedia's item
    shape; without them a stale ``explanations.jsonl`` is removed. Each file is replaced atomically.
    """
    import torch
    from safetensors.torch import save_file

    tensors = {k: _float32(k, v) for k, v in
               {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, **(extra or {})}.items()}
    if tensors["W_dec"].ndim != 2:
        raise ShapeError(f"Expect W_dec of shape (d_sae, d_in), got {tuple(tensors['W_dec'].shape)}.")
    d_sae, d_in = tensors["W_dec"].shape
    for key, size in (("d_in", d_in), ("d_sae", d_sae)):
        if key in cfg and cfg[key] != size:
            raise ShapeError(f"cfg {key}={cfg[key]} but W_dec has shape {(d_sae, d_in)} (d_sae, d_in).")
    arch = cfg.get("architecture") or "standard"
    if arch not in _SAELENS_ENCODERS:
        raise ConfigError(f"Unknown SAELens architecture {arch!r}; expect one of {list(_SAELENS_ENCODERS)}.")
    if arch == "gated":
        raise ConfigError("save_saelens writes b_enc; a gated SAE stores b_gate, b_mag and r_mag instead.")
    layout = {"W_dec": ("F", "D"), "b_dec": ("D",), **_SAELENS_ENCODERS[arch]}
    for key, axes in layout.items():
        want = tuple(int({"F": d_sae, "D": d_in}[a]) for a in axes)
        if key not in tensors:
            raise ShapeError(f"Architecture {arch!r} needs tensor {key!r} {want}; pass it in extra.")
        if tuple(tensors[key].shape) != want:
            names = ", ".join(_SAELENS_NAMES[a] for a in axes)
            raise ShapeError(f"Expect {key} of shape ({names}) = {want}, got {tuple(tensors[key].shape)}.")
    for key, t in tensors.items():
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise NonFiniteError(f"Tensor {key!r} holds {bad} NaN/Inf value(s).")
    lines = _explanation_lines(descriptions, int(d_sae)) if descriptions else None
    try:
        cfg_text = json.dumps(_saelens_cfg(cfg, int(d_in), int(d_sae), arch), indent=2)
    except TypeError as exc:
        raise ConfigError(f"cfg must be JSON-serialisable: {exc}.") from exc

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    _replace(folder / SAELENS_WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    _replace(folder / SAELENS_CFG, lambda tmp: tmp.write_text(cfg_text + "\n", encoding="utf-8"))
    if lines is not None:
        _replace(folder / "explanations.jsonl", lambda tmp: tmp.write_text(lines, encoding="utf-8"))
    else:
        (folder / "explanations.jsonl").unlink(missing_ok=True)


def _saelens_cfg(cfg: dict, d_in: int, d_sae: int, arch: str) -> dict:
    nested = cfg.get("meta") or {}
    if not isinstance(nested, dict) or set(nested) - set(_SAELENS_META):
        raise ConfigError(f"cfg['meta'] may hold only SAELens metadata fields {list(_SAELENS_META)}, "
                          f"got {nested!r}.")
    meta = {k: cfg[k] for k in _SAELENS_META if k in cfg} | nested
    out = {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none"}
    out |= {k: v for k, v in cfg.items() if k != "meta"}
    out |= {k: meta[k] for k in ("model_name", "hook_name", "hook_layer", "hook_head_index",
                                 "neuronpedia_id") if k in meta and k not in out}
    if arch == "topk" and "k" in out:  # SAELens < 6 configs carry k here
        out.setdefault("activation_fn_kwargs", {"k": out["k"]})
    out["meta"] = meta
    return out


def _explanation_lines(descriptions: dict[int, str], p: int) -> str:
    for index, text in descriptions.items():
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < p:
            raise ShapeError(f"Description key {index!r} is not a feature index in 0…{p - 1}.")
        if not isinstance(text, str):
            raise ConfigError(f"Description of feature {index} must be a string, got {type(text).__name__}.")
    return "".join(json.dumps({"index": int(i), "description": descriptions[i]}, ensure_ascii=False) + "\n"
                   for i in sorted(descriptions))


def _float32(name: str, x):
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float32).contiguous()
    try:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))  # a transposed view is Fortran-ordered
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"Tensor {name!r} is not a numeric array: {exc}.") from exc


def _replace(target: Path, write: Callable[[Path], Any]) -> None:
    """Write through a temporary file, then rename; the file gets ``0666 & ~umask`` (safetensors
    writes ``0600``), like any file the user creates."""
    tmp = target.with_name(target.name + ".tmp")
    write(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)
