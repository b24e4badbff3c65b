"""SAELens checkpoints: read one as a target, write one from a trained SAE.

**SAELens** (jbloomAus/SAELens 6.54.12: ``constants.py``; ``saes/sae.py`` ``save_model``,
``save_inference_model``, ``fold_activation_whitening``, ``SAEMetadata``; ``saes/topk_sae.py``
``act_times_W_dec``; ``loading/pretrained_sae_loaders.py`` ``handle_config_defaulting``,
``handle_pre_6_0_config``; ``training/activation_scaler.py``)
    A directory with ``cfg.json`` and ``sae_weights.safetensors`` (a flat state
    dict). ``W_dec`` is ``(d_sae, d_out)`` (``d_out = d_in`` except for
    transcoders): **rows are atoms**, ``D = W_decᵀ``. Every registered
    architecture that decodes with ``latents @ W_dec + b_dec`` is read:
    standard, topk, abstopk, batchtopk, matryoshka_batchtopk (training
    checkpoints), jumprelu, gated, matching_pursuit and the four transcoders;
    ``temporal`` and anything else is refused by name. Model and hook sit in
    ``cfg["metadata"]`` since SAELens 6 (``model_name``, ``hook_name``,
    ``neuronpedia_id``, ``sae_lens_version``…), at the top level before (old
    files spell them ``hook_point`` / ``hook_point_layer``), and in
    ``cfg["meta"]`` in files fbloop wrote before it matched SAELens; all are
    read. The decoder conventions applied are listed in :func:`load_saelens`.

:func:`save_saelens` writes the SAELens layout (and ``explanations.jsonl``), so a
trained SAE can be read back here, by SAELens, or shared.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, NonFiniteError, ShapeError, TargetFileError
from ..target import Target
from .common import Layout, _check_finite, _label, _check_float, _check_shapes, _folder, _int_key, _read_json_object, _with_safetensors
from .descriptions import _target

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_FORMAT_VERSION = "6.54.12"  # the SAELens whose format save_saelens writes (and tests load back)

_ENC: Layout = {"W_enc": ("D", "F"), "b_enc": ("F",)}
# What each architecture stores besides W_dec (F, O) and b_dec (O,); "O" is d_out (d_in for SAEs).
_SAELENS_ENCODERS: dict[str, Layout] = {
    "standard": _ENC, "topk": _ENC, "abstopk": _ENC, "batchtopk": _ENC, "matryoshka_batchtopk": _ENC,
    "jumprelu": {**_ENC, "threshold": ("F",)},
    "gated": {"W_enc": ("D", "F"), "b_gate": ("F",), "b_mag": ("F",), "r_mag": ("F",)},
    "matching_pursuit": {},
    "transcoder": _ENC, "skip_transcoder": {**_ENC, "W_skip": ("O", "D")},
    "jumprelu_transcoder": {**_ENC, "threshold": ("F",)},
    "jumprelu_skip_transcoder": {**_ENC, "threshold": ("F",), "W_skip": ("O", "D")},
}
# Architectures whose decode divides latents by ‖W_dec row‖ when rescale_acts_by_decoder_norm is set.
_RESCALING = ("topk", "abstopk", "batchtopk", "matryoshka_batchtopk")
# normalize_activations values that rescale each input and output by a per-token scalar: the atoms
# are the stored ones up to that scale, which PCC ignores.
_PER_TOKEN_SCALE = ("layer_norm", "constant_norm_rescale")
SAELENS_WHITENING = "activation_whitening.safetensors"
SAELENS_SCALER = "activation_scaler.json"
_SAELENS_NAMES = {"F": "d_sae", "D": "d_in", "O": "d_out"}
# Fields of SAELens's SAEMetadata that save_saelens accepts in cfg["metadata"] (or "meta").
_SAELENS_META = ("model_name", "hook_name", "model_class_name", "hook_layer", "hook_head_index",
                 "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens",
                 "neuronpedia_id", "context_size", "seqpos_slice", "dataset_path",
                 "sae_lens_version", "sae_lens_training_version")


# ---------------------------------------------------------------- SAELens


def load_saelens(path: str | Path, descriptions: str | Path | None = None, *,
                 force_descriptions: bool = False, explanation_model: str | None = None) -> Target:
    """Target ``Φ* = DᵀD`` from a SAELens directory (or a file inside it): the atoms SAELens decodes.

    ``D``'s columns are what ``SAE.load_from_disk(dir).decode(e_j) − decode(0)`` gives
    (checked against SAELens 6.54.12 for every architecture it registers, training
    checkpoints included): the rows of ``W_dec``, divided by their norms when the
    config sets ``rescale_acts_by_decoder_norm`` (topk family), divided by an
    ``activation_scaler.json`` ``scaling_factor`` and mapped through the inverse
    whitening of ``activation_whitening.safetensors`` when present (what the end of a
    SAELens training run folds in). ``meta["decoder_convention"]`` says which applied.
    A config that whitens without the whitening file is refused.

    ``descriptions`` names an explanations file or folder (:func:`fbloop.targets.checkpoints.load_descriptions`);
    without one, ``explanations.jsonl``/``.json`` or ``explanations/batch-*.jsonl.gz`` beside the
    weights are used. A file for another model or SAE is refused unless ``force_descriptions``.
    """
    import torch

    folder = _folder(path, SAELENS_WEIGHTS, "SAELens")
    cfg_file, weights = folder / SAELENS_CFG, folder / SAELENS_WEIGHTS
    cfg = _read_json_object(cfg_file)
    d_in, d_sae = _int_key(cfg_file, cfg, "d_in"), _int_key(cfg_file, cfg, "d_sae")
    d_out = _int_key(cfg_file, cfg, "d_out") if "d_out" in cfg else d_in
    arch = cfg.get("architecture") or "standard"
    if arch not in _SAELENS_ENCODERS:
        raise TargetFileError(f"{cfg_file}: architecture {arch!r} is not supported (its decode is not a fixed "
                              f"dictionary); expect one of {list(_SAELENS_ENCODERS)}.")
    layout = {"W_dec": ("F", "O"), "b_dec": ("O",), **_SAELENS_ENCODERS[arch]}
    dims = {"F": d_sae, "D": d_in, "O": d_out}

    def read(f) -> np.ndarray:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        if "W_dec" not in shapes:
            raise TargetFileError(f"{weights}: missing tensor 'W_dec'; the file holds {sorted(shapes)}.")
        if shapes["W_dec"] != (d_sae, d_out):
            out = "d_out" if "d_out" in cfg else "d_in"
            raise TargetFileError(f"{weights}: W_dec has shape {shapes['W_dec']}, but {SAELENS_CFG} says "
                                  f"d_sae={d_sae}, {out}={d_out}: expect (d_sae, {out}) = ({d_sae}, {d_out}).")
        _check_shapes(weights, shapes, layout, dims, _SAELENS_NAMES,
                      f"architecture {arch!r} stores {list(layout)}")
        w = f.get_tensor("W_dec")
        _check_float(weights, "W_dec", w)
        for key in layout:  # one tensor at a time: a real W_enc is hundreds of MB
            _check_finite(weights, key, w if key == "W_dec" else f.get_tensor(key))
        return w.to(torch.float64).numpy()  # (d_sae, d_out)

    w_dec = _with_safetensors(weights, read)
    w_dec, convention = _decoded_atoms(folder, cfg_file, cfg, arch, w_dec)
    meta = _saelens_meta(cfg)
    label = _label(meta, folder)
    extra = {"d_out": d_out} if d_out != d_in else {}
    return _target(weights, w_dec.T, f"saelens({label}, p={d_sae})", folder, descriptions,
                   {"format": "saelens", "architecture": arch, "d": d_out, "p": d_sae, **extra, **meta,
                    "decoder_convention": convention},
                   force=force_descriptions, explanation_model=explanation_model)


def _decoded_atoms(folder: Path, cfg_file: Path, cfg: dict, arch: str, w_dec: np.ndarray) -> tuple[np.ndarray, str]:
    """``W_dec`` (d_sae, d_out) → the atoms SAELens decodes, and words saying what was applied."""
    steps = []
    if cfg.get("rescale_acts_by_decoder_norm") and arch in _RESCALING:
        norms = np.linalg.norm(w_dec, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise TargetFileError(f"{cfg_file}: rescale_acts_by_decoder_norm divides by ‖W_dec row‖, but "
                                  f"{int(np.sum(norms == 0))} row(s) are zero.")
        w_dec = w_dec / norms
        steps.append("rows divided by their norms (rescale_acts_by_decoder_norm)")
    scaler = folder / SAELENS_SCALER
    if scaler.is_file():
        factor = _read_json_object(scaler).get("scaling_factor")
        if factor is not None:
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
                raise TargetFileError(f"{scaler}: scaling_factor must be a positive number, got {factor!r}.")
            if steps:  # rows are divided by their norms at decode time: a global factor cancels
                steps.append(f"{SAELENS_SCALER} scaling_factor {factor:g} cancels in the unit rows")
            else:  # fold_activation_norm_scaling_factor: W_dec /= scaling_factor
                w_dec = w_dec / factor
                steps.append(f"divided by {SAELENS_SCALER} scaling_factor {factor:g}")
    norm = cfg.get("normalize_activations") or "none"
    whitening = folder / SAELENS_WHITENING
    if norm == "covariance_whitening" or whitening.is_file():
        if not whitening.is_file():
            raise TargetFileError(f"{cfg_file}: normalize_activations is 'covariance_whitening', so W_dec decodes "
                                  f"into whitened space, but {SAELENS_WHITENING} is not beside it; fbloop "
                                  "cannot map the atoms back to the model's activations. Save the SAE with "
                                  "save_inference_model (which folds the whitening) or add the file.")
        inv = _with_safetensors(whitening, lambda f: _whitening_inverse(whitening, f, w_dec.shape[1]))
        w_dec = w_dec @ inv
        steps.append(f"mapped through {SAELENS_WHITENING} inverse_matrix (unwhitened)")
    elif norm in _PER_TOKEN_SCALE:
        steps.append(f"normalize_activations={norm!r} rescales each token by its own scalar: atoms "
                     "are the stored ones up to that per-token scale")
    elif norm not in ("none", "expected_average_only_in"):
        raise TargetFileError(f"{cfg_file}: normalize_activations {norm!r} is unknown; expect none, "
                              "expected_average_only_in, layer_norm, constant_norm_rescale or "
                              "covariance_whitening.")
    return w_dec, "W_dec rows" + ("; " + "; ".join(steps) if steps else " as stored")


def _whitening_inverse(file: Path, f, d: int) -> np.ndarray:
    import torch

    keys = set(f.keys())
    if "inverse_matrix" not in keys:
        raise TargetFileError(f"{file}: missing tensor 'inverse_matrix'; the file holds {sorted(keys)}.")
    inv = f.get_tensor("inverse_matrix")
    if tuple(inv.shape) != (d, d):
        raise TargetFileError(f"{file}: inverse_matrix has shape {tuple(inv.shape)}; expect ({d}, {d}).")
    _check_float(file, "inverse_matrix", inv)
    _check_finite(file, "inverse_matrix", inv)
    return inv.to(torch.float64).numpy()


def _saelens_meta(cfg: dict) -> dict[str, Any]:
    """Model, hook, layer and Neuronpedia id: ``cfg["metadata"]`` (SAELens ≥ 6), ``cfg["meta"]``
    (fbloop before it wrote ``metadata``), or the top level (SAELens < 6, ``hook_point*`` too).
    Without a ``hook_layer``, the layer is read from the hook name (``blocks.3.…``, ``layers.3``)."""
    nested = [cfg[k] for k in ("metadata", "meta") if isinstance(cfg.get(k), dict)]
    found = {}
    for out, keys in (("model_name", ("model_name",)), ("hook_name", ("hook_name", "hook_point")),
                      ("layer", ("hook_layer", "hook_point_layer")), ("neuronpedia_id", ("neuronpedia_id",)),
                      ("sae_lens_version", ("sae_lens_version",))):
        value = next((src[k] for src in (*nested, cfg) for k in keys if src.get(k) is not None), None)
        if value is not None:
            found[out] = value
    if "layer" not in found and isinstance(found.get("hook_name"), str):
        match = re.search(r"(?:blocks|layers|layer|h)[._](\d+)(?:[._]|$)", found["hook_name"])
        if match:
            found["layer"] = int(match.group(1))
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
    (``model_name``, ``hook_name``, ``hook_layer``…, or a ``metadata`` / ``meta`` dict) are written
    both to ``metadata`` (with ``sae_lens_version``), where SAELens ≥ 6 reads them, and to the top
    level, where older versions did; SAELens 6's ``SAE.load_from_disk`` loads the result.
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
    nested = {}
    for key in ("meta", "metadata"):
        part = cfg.get(key) or {}
        if not isinstance(part, dict) or set(part) - set(_SAELENS_META):
            raise ConfigError(f"cfg[{key!r}] may hold only SAELens metadata fields {list(_SAELENS_META)}, "
                              f"got {part!r}.")
        nested |= part
    meta = {k: cfg[k] for k in _SAELENS_META if k in cfg} | nested
    meta.setdefault("sae_lens_version", SAELENS_FORMAT_VERSION)  # SAELens reads "metadata" from 6.0 on
    meta.setdefault("sae_lens_training_version", None)
    out = {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none"}
    out |= {k: v for k, v in cfg.items() if k not in ("meta", "metadata")}
    out |= {k: meta[k] for k in ("model_name", "hook_name", "hook_layer", "hook_head_index",
                                 "neuronpedia_id") if k in meta and k not in out}
    if arch == "topk" and "k" in out:  # SAELens < 6 configs carry k here
        out.setdefault("activation_fn_kwargs", {"k": out["k"]})
    out["metadata"] = meta
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
