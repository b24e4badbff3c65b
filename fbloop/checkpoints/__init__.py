"""Real SAE checkpoints and feature descriptions as targets.

Files are read directly with safetensors, torch and json; neither ``sae-lens``
nor ``dictionary_learning`` is imported. What each reader assumes was checked
against the projects' own code; each module's docstring says what it read:

- :mod:`.saelens`: SAELens directories (:func:`load_saelens`, :func:`save_saelens`);
- :mod:`.dictionary_learning`: dictionary_learning directories (:func:`load_dictionary_learning`);
- :mod:`.descriptions`: Neuronpedia explanation exports (:func:`load_descriptions`);
- :mod:`.common`: the helpers they share (folders, JSON, shapes, finiteness).

``D`` is the stored decoder. Some classes rescale feature activations by
decoder norms (dictionary_learning's gated and JumpReLU autoencoders, SAELens
top-k with ``rescale_acts_by_decoder_norm``), which would make the effective
atoms unit-norm; fbloop keeps the stored norms. A SAELens
``finetuning_scaling_factor`` is not applied.
"""

from .common import Layout
from .descriptions import EXPLANATION_FILES, load_descriptions
from .dictionary_learning import DICTLEARN_CFG, DICTLEARN_WEIGHTS, load_dictionary_learning
from .saelens import SAELENS_CFG, SAELENS_WEIGHTS, load_saelens, save_saelens

__all__ = [
    "Layout",
    "EXPLANATION_FILES", "load_descriptions",
    "DICTLEARN_CFG", "DICTLEARN_WEIGHTS", "load_dictionary_learning",
    "SAELENS_CFG", "SAELENS_WEIGHTS", "load_saelens", "save_saelens",
]
