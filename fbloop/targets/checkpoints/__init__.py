"""Real SAE checkpoints and feature descriptions as targets.

Files are read directly with safetensors, torch and json; neither ``sae-lens``
nor ``dictionary_learning`` is imported. What each reader assumes was checked
against the projects' own code; each module's docstring says what it read:

- :mod:`.saelens`: SAELens directories (:func:`load_saelens`, :func:`save_saelens`);
- :mod:`.dictionary_learning`: dictionary_learning directories (:func:`load_dictionary_learning`);
- :mod:`.others`: EleutherAI sparsify and Gemma Scope files (:func:`load_sparsify`, :func:`load_gemmascope`);
- :mod:`.descriptions`: Neuronpedia explanation exports (:func:`load_descriptions`);
- :mod:`.common`: the helpers they share (folders, JSON, shapes, finiteness).

``D``'s columns are the atoms the package's own loader decodes
(``decode(e_j) − decode(0)``), not only the raw tensor: SAELens's
``rescale_acts_by_decoder_norm`` (unit rows), activation scaling and whitening,
dictionary_learning's ``AutoEncoder`` decoder normalisation. Each target's
``meta["decoder_convention"]`` (shown by ``fbloop target``) says what was applied.
``tests/fixtures/real`` holds files the real packages wrote, with their decoded atoms.
"""

from .common import Layout
from .descriptions import EXPLANATION_FILES, find_descriptions, load_descriptions
from .dictionary_learning import DICTLEARN_CFG, DICTLEARN_WEIGHTS, load_dictionary_learning
from .others import GEMMASCOPE_WEIGHTS, SPARSIFY_WEIGHTS, load_gemmascope, load_sparsify
from .saelens import SAELENS_CFG, SAELENS_WEIGHTS, load_saelens, save_saelens

__all__ = [
    "Layout",
    "EXPLANATION_FILES", "find_descriptions", "load_descriptions",
    "DICTLEARN_CFG", "DICTLEARN_WEIGHTS", "load_dictionary_learning",
    "GEMMASCOPE_WEIGHTS", "SPARSIFY_WEIGHTS", "load_gemmascope", "load_sparsify",
    "SAELENS_CFG", "SAELENS_WEIGHTS", "load_saelens", "save_saelens",
]
