"""A trained SAE saved as a SAELens directory and turned into a Target; :func:`build_target` runs the whole path."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..target import Target, from_dictionary
from .activations import MODELS, ActivationConfig, collect_activations
from .corpus import CORPUS
from .describe import describe_features
from .train import SAEConfig, SAEResult, train_sae


# ---------------------------------------------------------------- saving and the target


def saelens_cfg(result: SAEResult, act_cfg: ActivationConfig, extra: dict | None = None) -> dict:
    """``cfg.json`` for the SAELens layout."""
    spec = MODELS[act_cfg.model]
    cfg = result.config
    hook = "embeddings" if act_cfg.layer == 0 else f"encoder.layer.{act_cfg.layer - 1}.output"
    return {"d_in": result.d, "d_sae": result.p,
            "architecture": "topk" if cfg.architecture == "topk" else "standard",
            "activation_fn_kwargs": {"k": cfg.k} if cfg.architecture == "topk" else {},
            "k": cfg.k if cfg.architecture == "topk" else None,
            "model_name": spec.name, "hook_name": hook, "hook_layer": act_cfg.layer, "layer": act_cfg.layer,
            "context_size": act_cfg.max_len, "dataset_path": CORPUS, "dtype": "float32",
            # Trained on (x − mean)·act_scale; both are folded into the saved biases (raw inputs).
            "normalize_activations": "none", "act_scale": result.scale,
            "fve": result.fve, "n_dead": result.n_dead, "n_tokens": act_cfg.n_tokens,
            "train": asdict(cfg), "train_s": round(result.train_s, 2), **(extra or {})}


def save_sae(result: SAEResult, act_cfg: ActivationConfig, out_dir: str | Path,
             descriptions: list[str] | None = None, extra: dict | None = None) -> Path:
    """Write ``result`` as a SAELens directory (``fbloop.targets.checkpoints.save_saelens``): ``cfg.json``,
    ``sae_weights.safetensors`` (``W_enc`` (d, p), ``b_enc`` (p,), ``W_dec`` (p, d), ``b_dec`` (d,))
    and ``explanations.jsonl``. ``fbloop.targets.checkpoints.load_saelens`` reads it back."""
    from ..checkpoints import save_saelens

    w = result.saelens_weights()
    save_saelens(out_dir, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], saelens_cfg(result, act_cfg, extra),
                 dict(enumerate(descriptions)) if descriptions is not None else None)
    return Path(out_dir)


def target_from_sae(result: SAEResult, descriptions: list[str] | None = None, name: str = "sae",
                    meta: dict | None = None) -> Target:
    """``Φ* = W_dec W_decᵀ`` (``p × p``): the dictionary ``D = W_decᵀ`` has the atoms as columns."""
    return from_dictionary(result.W_dec.T, name=name,
                           descriptions=tuple(descriptions) if descriptions is not None else None,
                           meta={"source": "sae", "fve": result.fve, "n_dead": result.n_dead, **(meta or {})})


def build_target(act_cfg: ActivationConfig, sae_cfg: SAEConfig, out_dir: str | Path,
                 progress: bool = True) -> Target:
    """Collect activations, train the SAE, describe its features, save to ``out_dir``; the Target."""
    acts = collect_activations(act_cfg, progress=progress)
    result = train_sae(acts.x, sae_cfg, progress=progress)
    descriptions = describe_features(result, acts)
    save_sae(result, act_cfg, out_dir, descriptions)
    k = f",k={sae_cfg.k}" if sae_cfg.architecture == "topk" else ""
    name = f"sae({act_cfg.model},layer={act_cfg.layer},p={sae_cfg.n_features}{k})"
    return target_from_sae(result, descriptions, name,
                           {"model": MODELS[act_cfg.model].name, "layer": act_cfg.layer, "d_in": result.d,
                            "n_tokens": act_cfg.n_tokens, "architecture": sae_cfg.architecture,
                            "saelens_dir": str(out_dir)})
