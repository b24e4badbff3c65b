"""Real dictionaries: a sparse autoencoder trained on a transformer's activations, offline.

The path, end to end (:func:`build_target`)::

    Python's stdlib docstrings ─► MiniLM layer L hidden states (n, d)   collect_activations
        ─► TopK (or ReLU + L1) SAE, d → p                               train_sae
        ─► a description per feature from its top tokens                 describe_features
        ─► SAELens directory + fbloop Target with Φ* = W_dec W_decᵀ      build_target

- :mod:`.corpus`: the stdlib docstrings, parsed, never imported;
- :mod:`.activations`: the model and its hidden states, cached;
- :mod:`.train`: the SAE, its config and training;
- :mod:`.describe`: a description per feature from its top-activating tokens;
- :mod:`.export`: the SAELens directory, the Target, and :func:`build_target`.
"""

from .activations import CONTEXT_TOKENS, MODELS, ActivationConfig, Activations, ModelSpec, collect_activations, load_model
from .corpus import CORPUS, _public, stdlib_docstrings, stdlib_sources
from .describe import describe_features, top_activations
from .export import build_target, saelens_cfg, save_sae, target_from_sae
from .train import SAEConfig, SAEResult, _encode, train_sae

__all__ = [
    "CONTEXT_TOKENS", "MODELS", "ActivationConfig", "Activations", "ModelSpec", "collect_activations", "load_model",
    "CORPUS", "_public", "stdlib_docstrings", "stdlib_sources",
    "describe_features", "top_activations",
    "build_target", "saelens_cfg", "save_sae", "target_from_sae",
    "SAEConfig", "SAEResult", "_encode", "train_sae",
]
