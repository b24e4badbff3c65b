"""Targets: where the ground truth ``Φ* = Dᵀ D`` comes from.

- :mod:`.target`: :class:`Target` (``Φ*`` held as a factor), synthetic dictionaries, ``Φ`` and
  dictionary arrays; the spec strings are listed there;
- :mod:`.load`: :func:`load_target` (a spec string → a target), the RFM target, target files;
- :mod:`.rfm`: the Recursive Feature Machine of the paper's Figures 1–2;
- :mod:`.checkpoints`: SAE checkpoints the ecosystem writes (SAELens, dictionary_learning,
  sparsify, Gemma Scope) and Neuronpedia descriptions;
- :mod:`.sae`: a sparse autoencoder trained on a real transformer's activations.
"""

from .load import (PRESETS, TARGET_KINDS, load_dictionary, load_phi, load_target, parse_spec, rfm_target, save_target,
                   with_descriptions)
from .target import (DENSE_P_LIMIT, GRAM_SVD_ABOVE, RANK_TOL, SyntheticConfig, Target, check_dense, from_dictionary,
                     from_phi, synthetic)

__all__ = ["Target", "SyntheticConfig", "synthetic", "from_dictionary", "from_phi", "check_dense", "RANK_TOL",
           "DENSE_P_LIMIT", "GRAM_SVD_ABOVE", "load_target", "load_phi", "load_dictionary", "save_target",
           "parse_spec", "with_descriptions", "rfm_target", "PRESETS", "TARGET_KINDS"]
