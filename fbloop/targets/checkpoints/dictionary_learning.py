"""dictionary_learning checkpoints as targets.

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

    **Atoms are what ``utils.load_dictionary`` decodes** (checked against
    dictionary-learning 0.1.0 for every trainer, with and without
    ``normalize_activations``): ``AutoEncoder.from_pretrained`` normalises the
    decoder columns to unit norm (folding the norms into the encoder), so an
    ``AutoEncoder``'s atoms are its unit columns; every other class decodes with
    the stored decoder. ``normalize_activations`` only rescales biases in the saved
    file (``scale_biases``), so it changes no atom. Intermediate checkpoints
    ``trainer_i/checkpoints/ae_<step>.pt`` are read with ``trainer_i/config.json``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ...errors import TargetFileError
from ..target import Target
from .common import Layout, _brief, _check_finite, _label, _check_float, _check_shapes, _folder, _read_json_object
from .descriptions import _target

DICTLEARN_WEIGHTS = "ae.pt"
DICTLEARN_CFG = "config.json"

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


# ---------------------------------------------------------------- dictionary_learning


def load_dictionary_learning(path: str | Path, descriptions: str | Path | None = None, *,
                             force_descriptions: bool = False, explanation_model: str | None = None) -> Target:
    """Target ``Φ* = DᵀD`` from a dictionary_learning directory (``ae.pt`` + ``config.json``), or an
    intermediate checkpoint ``trainer_i/checkpoints/ae_<step>.pt``: the atoms ``load_dictionary`` decodes."""
    import torch

    given = Path(path)
    if given.is_file() and given.suffix == ".pt" and given.name != DICTLEARN_WEIGHTS:
        # checkpoints/ae_<step>.pt: the trainer's config.json sits one folder up
        weights = given
        folder = given.parent.parent if given.parent.name == "checkpoints" else given.parent
    else:
        folder = _folder(path, DICTLEARN_WEIGHTS, "dictionary_learning")
        weights = folder / DICTLEARN_WEIGHTS
    cfg_file = folder / DICTLEARN_CFG
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
    _check_float(weights, dec_key, state[dec_key])
    for key in (dec_key, *others):
        _check_finite(weights, key, state[key])
    w = state[dec_key].to(torch.float64).numpy()
    D = w if dec_axes == ("D", "F") else w.T  # (activation_dim, dict_size): atoms as columns
    convention = "decoder as stored"
    if dict_class == "AutoEncoder":  # AutoEncoder.from_pretrained(normalize_decoder=True)
        norms = np.linalg.norm(D, axis=0)
        if np.any(norms == 0):
            raise TargetFileError(f"{weights}: AutoEncoder.from_pretrained divides decoder columns by their "
                                  f"norms, but {int(np.sum(norms == 0))} column(s) are zero.")
        D = D / norms
        convention = "decoder columns divided by their norms (AutoEncoder.from_pretrained normalize_decoder)"
    meta = {"format": "dictionary_learning", "dict_class": dict_class, "d": dims["D"], "p": dims["F"],
            "decoder_convention": convention}
    if weights.name != DICTLEARN_WEIGHTS:
        meta["checkpoint"] = weights.name
    for out, key in (("model_name", "lm_name"), ("hook_name", "submodule_name"), ("layer", "layer"),
                     ("k", "k"), ("norm_factor", "norm_factor")):
        if trainer.get(key) is not None:
            meta[out] = trainer[key]
    label = _label(meta, folder)
    if "checkpoint" in meta:
        label += f", {meta['checkpoint']}"
    return _target(weights, D, f"dictlearn({label}, p={dims['F']})", folder, descriptions, meta,
                   force=force_descriptions, explanation_model=explanation_model)


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
