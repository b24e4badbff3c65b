"""Learners: what turns answers into ``Φ̂``.

- the incremental gradient learner (the paper's Algorithm 3) on ``Φ̂ = U Uᵀ``, below;
- :mod:`.exact`: the exact small-``p`` solve (cvxpy);
- :mod:`.direct`: the direct solve of the constructive designs' pairs;
- :mod:`.nystrom`: Nyström's estimate from the pivot design's answers.

The gradient learner:

Answers arrive in chunks (:meth:`GradientLearner.add_pairs` /
:meth:`add_triplets` / :meth:`add_tuples` for closest-of-k, rank-k and odd-one-out answers); after each chunk the learner takes a few Adam steps on
minibatches drawn from everything seen so far, and :meth:`finish` fits to
convergence at the end.

Each step touches only the rows of ``U`` at the batch's nonzero coordinates:
the loss is built on the gathered rows (a leaf tensor of shape ``(rows, r)``)
and a *row-lazy* Adam updates only those rows' moments, each row with its own
step count. A pair therefore costs ``O(s·r)``, not ``O(p·r)``.

Equality pairs alone (no triplets) take a fast path with no autograd: the
forward is one ``embedding_bag`` over ``U`` (``proj = Σ_k val_k U[idx_k]``), the
gradient is derived by hand (``∂ℓ/∂proj_i = 2ℓ'(q_i)·proj_i / B``) and summed
into the touched rows by a second ``embedding_bag`` over the batch's slots
sorted by row. It matches the autograd gradient (tested) and runs 2.5–3× faster
(p = 1024–4096, r = 128–512, 2 CPU cores); triplets, and pairs mixed with
triplets, keep the autograd path.

Answers live in preallocated tensors on the learner's device that double when
full (int32 indices, values in the learner's dtype — float32 above
``p = 2048``), so adding a chunk costs ``O(chunk)`` however much is stored, and
minibatches are drawn uniformly from everything stored.

Modules: :mod:`.config` (:class:`LearnerConfig`), :mod:`.rank` (the factor's
rank: the columns ``U`` starts with, the candidates of the rank choice),
:mod:`.losses` (the loss terms, described there), :mod:`.optim` (the row-lazy
Adam), :mod:`.columns` (the stored answers) and :mod:`.gradient`
(:class:`GradientLearner`).
"""

from .config import LearnerConfig
from .gradient import ARRIVAL_REPLAY, DENSE_TRIPLETS_MAX, MAX_SOURCES, GradientLearner
from .losses import _triplet_loss
from .rank import DEFAULT_RANK, factor_rank, gap_candidates, psd_dof

# The constants are re-exported to be read; the code reads them from its own module, so patch them there
# (fbloop.learners.gradient.DENSE_TRIPLETS_MAX).
__all__ = [
    "LearnerConfig", "GradientLearner",
    "DEFAULT_RANK", "factor_rank", "gap_candidates", "psd_dof",
    "ARRIVAL_REPLAY", "DENSE_TRIPLETS_MAX", "MAX_SOURCES",
    "_triplet_loss",
]
