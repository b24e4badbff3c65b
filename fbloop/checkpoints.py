"""Real SAE checkpoints and feature descriptions as targets.

Files are read directly with safetensors, torch and json; neither ``sae-lens``
nor ``dictionary_learning`` is imported. What each reader assumes was checked
against the projects' own code:

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

**dictionary_learning** (saprmarks/dictionary_learning: ``dictionary.py``,
``trainers/{standard,top_k,batch_top_k,matryoshka_batch_top_k,jumprelu,gated}.py``
``config``, ``utils.load_dictionary``, ``training.trainSAE``)
    A directory with ``ae.pt`` (``torch.save`` of the module's state dict) and
    ``config.json`` = ``{"trainer": {"dict_class", "activation_dim",
    "dict_size", "layer", "lm_name", "submodule_name", "k", ...}, "buffer": ...}``.
    ``AutoEncoder`` (``bias``, ``encoder.*``), ``AutoEncoderNew``
    (``decoder.bias``), ``GatedAutoEncoder`` (``decoder_bias``, ``r_mag``,
    ``gate_bias``, ``mag_bias``), ``AutoEncoderTopK`` and ``BatchTopKSAE``
    (``b_dec`` and scalar ``k``, ``threshold`` buffers) decode with an
    ``nn.Linear``: ``decoder.weight`` is ``(activation_dim, dict_size)``,
    **columns are atoms**, ``D = decoder.weight``. ``JumpReluAutoEncoder``
    (``W_enc``, ``b_enc``, ``b_dec``, ``threshold (dict_size,)``) and
    ``MatryoshkaBatchTopKSAE`` (the same plus ``group_sizes``) hold ``W_dec`` as
    ``(dict_size, activation_dim)``: rows are atoms, ``D = W_decᵀ``. Without a
    ``dict_class`` (or without ``config.json``) the class is inferred from the
    state dict's keys. A ``torch.compile``d module's ``_orig_mod.`` prefix is
    dropped. Crosscoders (3-D weights) are not supported.

**Neuronpedia explanation exports**
    The old ``/api/explanation/export`` answer is a JSON list of
    ``{"modelId", "layer", "index", "description", "explanationModelName",
    "typeName"}`` with ``index`` a numeric string; the ``neuronpedia-datasets``
    S3 batches (``explanations/batch-N.jsonl.gz``) carry the same objects one a
    line, plus ``id``, ``authorId``, ``embedding``…; a feature's API answer
    holds them in an ``explanations`` list. All three are read (``.gz`` too);
    only ``index`` and ``description`` are used.

:func:`save_saelens` writes the SAELens layout (and ``explanations.jsonl``), so a
trained SAE can be read back here, by SAELens, or shared.

``D`` is the stored decoder. Some classes rescale feature activations by
decoder norms (dictionary_learning's gated and JumpReLU autoencoders, SAELens
top-k with ``rescale_acts_by_decoder_norm``), which would make the effective
atoms unit-norm; fbloop keeps the stored norms. A SAELens
``finetuning_scaling_factor`` is not applied.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, FbloopError, NonFiniteError, ShapeError, TargetFileError
from .targets import Target, from_dictionary

SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
DICTLEARN_WEIGHTS = "ae.pt"
DICTLEARN_CFG = "config.json"
EXPLANATION_FILES = ("explanations.jsonl", "explanations.json")  # loaded from a checkpoint's directory

# Axes: "F" is the number of features (d_sae, dict_size), "D" the activation dimension (d_in).
Layout = dict[str, tuple[str, ...]]

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

_LINEAR_TOPK: Layout = {"encoder.weight": ("F", "D"), "encoder.bias": ("F",), "b_dec": ("D",)}
# dict_class → (decoder key, decoder axes, the other tensors it stores).
_DICTLEARN: dict[str, tuple[str, tuple[str, str], Layout]] = {
    "AutoEncoder": ("decoder.weight", ("D", "F"),
                    {"encoder.weight": ("F", "D"), "encoder.bias": ("F",), "bias": ("D",)}),
    "AutoEncoderNew": ("decoder.weight", ("D", "F"),
                       {"encoder.weight": ("F", "D"), "encoder.bias": ("F",), "decoder.bias": ("D",)}),
    "GatedAutoEncoder": ("decoder.weight", ("D", "F"),
                         {"encoder.weight": ("F", "D"), "decoder_bias": ("D",), "r_mag": ("F",),
                          "gate_bias": ("F",), "mag_bias": ("F",)}),
    "AutoEncoderTopK": ("decoder.weight", ("D", "F"), _LINEAR_TOPK),
    "BatchTopKSAE": ("decoder.weight", ("D", "F"), _LINEAR_TOPK),
    "JumpReluAutoEncoder": ("W_dec", ("F", "D"),
                            {"W_enc": ("D", "F"), "b_enc": ("F",), "b_dec": ("D",), "threshold": ("F",)}),
    "MatryoshkaBatchTopKSAE": ("W_dec", ("F", "D"), {"W_enc": ("D", "F"), "b_enc": ("F",), "b_dec": ("D",)}),
}
_DICTLEARN_NAMES = {"F": "dict_size", "D": "activation_dim"}


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
        return torch.from_numpy(np.array(x, dtype=np.float32))
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"Tensor {name!r} is not a numeric array: {exc}.") from exc


def _replace(target: Path, write: Callable[[Path], Any]) -> None:
    tmp = target.with_name(target.name + ".tmp")
    write(tmp)
    os.replace(tmp, target)


# ---------------------------------------------------------------- dictionary_learning


def load_dictionary_learning(path: str | Path, descriptions: str | Path | None = None) -> Target:
    """Target ``Φ* = DᵀD`` from a dictionary_learning directory (``ae.pt`` + ``config.json``)."""
    import torch

    folder = _folder(path, DICTLEARN_WEIGHTS, "dictionary_learning")
    weights, cfg_file = folder / DICTLEARN_WEIGHTS, folder / DICTLEARN_CFG
    trainer: dict = {}
    if cfg_file.is_file():
        cfg = _read_json_object(cfg_file)
        trainer = cfg.get("trainer", {})
        if not isinstance(trainer, dict):
            raise TargetFileError(f"{cfg_file}: expect 'trainer' to be an object, "
                                  f"got {type(trainer).__name__}.")
    state = _read_state_dict(weights)
    dict_class = trainer.get("dict_class") or _infer_dict_class(state)
    if dict_class is None:
        raise TargetFileError(f"{weights}: unknown layout: expect a dictionary_learning state dict with "
                              f"'decoder.weight' (activation_dim, dict_size) or 'W_dec' (dict_size, "
                              f"activation_dim); got keys {sorted(state)}.")
    if not isinstance(dict_class, str) or dict_class not in _DICTLEARN:
        raise TargetFileError(f"{cfg_file}: unknown dict_class {dict_class!r}; "
                              f"expect one of {list(_DICTLEARN)}.")
    dec_key, dec_axes, others = _DICTLEARN[dict_class]
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if dec_key not in shapes:
        raise TargetFileError(f"{weights}: missing tensor {dec_key!r} ({dict_class}); the file holds "
                              f"{sorted(shapes)}.")
    if len(shapes[dec_key]) != 2:
        raise TargetFileError(f"{weights}: {dec_key} has shape {shapes[dec_key]}; expect "
                              f"({', '.join(_DICTLEARN_NAMES[a] for a in dec_axes)}).")
    dims = dict(zip(dec_axes, shapes[dec_key]))
    said = {"D": trainer.get("activation_dim", dims["D"]), "F": trainer.get("dict_size", dims["F"])}
    if said != dims:
        names = ", ".join(_DICTLEARN_NAMES[a] for a in dec_axes)
        raise TargetFileError(f"{weights}: {dec_key} has shape {shapes[dec_key]}, but {DICTLEARN_CFG} says "
                              f"activation_dim={said['D']}, dict_size={said['F']}: expect ({names}) = "
                              f"{tuple(said[a] for a in dec_axes)}.")
    _check_shapes(weights, shapes, others, dims, _DICTLEARN_NAMES,
                  f"{dict_class} stores {[dec_key, *others]}")
    for key in (dec_key, *others):
        _check_finite(weights, key, state[key])
    w = state[dec_key].to(torch.float64).numpy()
    D = w if dec_axes == ("D", "F") else w.T  # (activation_dim, dict_size): atoms as columns
    meta = {"format": "dictionary_learning", "dict_class": dict_class, "d": dims["D"], "p": dims["F"]}
    for out, key in (("model_name", "lm_name"), ("hook_name", "submodule_name"), ("layer", "layer"),
                     ("k", "k")):
        if trainer.get(key) is not None:
            meta[out] = trainer[key]
    label = " ".join(str(meta[k]) for k in ("model_name", "hook_name") if k in meta) or folder.name
    return _target(weights, D, f"dictlearn({label}, p={dims['F']})", folder, descriptions, meta)


def _read_state_dict(file: Path) -> dict:
    import torch

    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refuses pickled modules, optimizers, classes
        raise TargetFileError(f"{file}: cannot read a torch state dict: it pickles objects other than "
                              "tensors, which torch.load(weights_only=True) refuses; expect "
                              "torch.save(module.state_dict()).") from exc
    except Exception as exc:  # truncated zip, not a torch file
        raise TargetFileError(f"{file}: cannot read a torch state dict ({type(exc).__name__}: "
                              f"{_brief(exc)}); the file may be truncated.") from exc
    if not isinstance(obj, dict):
        raise TargetFileError(f"{file}: expect a state dict (names → tensors), got {type(obj).__name__}.")
    # torch.compile'd modules prefix every key with "_orig_mod."
    state = {str(k).removeprefix("_orig_mod."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise TargetFileError(f"{file}: holds no tensors; got keys {sorted(map(str, obj))[:10]}.")
    return state


def _infer_dict_class(state: dict) -> str | None:
    if "W_dec" in state:
        return "MatryoshkaBatchTopKSAE" if "group_sizes" in state else "JumpReluAutoEncoder"
    if "decoder.weight" in state:
        if "r_mag" in state:
            return "GatedAutoEncoder"
        if "k" in state:
            return "AutoEncoderTopK"  # BatchTopKSAE stores the same tensors
        return "AutoEncoderNew" if "decoder.bias" in state else "AutoEncoder"
    return None


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


def _brief(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())  # no terminal colour codes
    return text if len(text) <= limit else text[: limit - 1] + "…"
