"""How often each source of answers is wrong, read from what a run stores, for the noise-aware learner.

A *source* is one name that answers are stored under: an oracle, an LLM (and its order-swapped
asking, stored as ``NAME#swap``), each person annotating, each pool member. The gradient learner fits
a source's ±1 answers with the flip-robust loss at its flip rate ``ε``
(:meth:`fbloop.learners.GradientLearner.set_source_noise`), so a careless annotator or a noisy model
counts for less. The estimates:

- **Attention checks** (people, :mod:`fbloop.agents.people`): ``ε = (wrong + α) / (checks + α + β)``, the
  posterior mean under a Beta(α, β) prior of mean 0.1 worth :data:`CHECK_PRIOR` = 5 checks. A person
  with no answered check is left exact (ε = 0), as before any estimate. A flipped answer is a random
  *other* option for triplets, closest of ``k`` and odd one out, so it always fails its check; a flipped
  ranking is a random ranking, which still puts the right candidate first (all a rank check asks) one
  time in ``k``: there ``ε = wrong rate / (1 − 1/k)`` (:func:`check_chance`).
- **Order swaps** (the LLM agent with ``order_swap``): each triplet is asked twice, its candidates
  swapped. If each asking errs independently at rate ``ε``, the two disagree with probability
  ``d = 2ε(1 − ε)``, so ``ε = (1 − sqrt(1 − 2d)) / 2``; both askings get it. From :data:`MIN_SWAPS`
  answered pairs on. A triplet the model gets wrong in both orders agrees with itself, so this is a
  lower bound on its error rate; a position bias ("first" whatever the order) shows as disagreement.
- **Agreement in a pool**: against a reference member, or pairwise (:mod:`fbloop.agents.pool`), on the
  first place of tuple answers: :func:`pair_signal`, :func:`accuracy_from_signal` and
  :func:`flip_rate_from_accuracy`.

Each agent reports its own estimates (:meth:`fbloop.agents.base.Agent.noise`) from these functions.

Every ``ε`` is capped at :data:`MAX_NOISE`: at 0.5 a source's answers would carry nothing.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError
from ..records import MIXED, Answers

MAX_NOISE = 0.45  # a flip rate is capped here (0.5 would erase the source's answers)
CHECK_PRIOR = (0.5, 4.5)  # Beta(α, β) on a person's flip rate: mean 0.1, worth 5 checks
MIN_SWAPS = 20  # order-swapped pairs before the LLM's flip rate is estimated


def check_chance(kind: str, k: int) -> float:
    """How often a flipped answer still passes an attention check on a ``kind`` question of ``k`` options:
    ``1/k`` for a ranking (random, and the check asks only its first place), else 0 (a random other option)."""
    return 1.0 / k if kind == "rank" else 0.0


def flip_rate_from_checks(checks: int, correct: int, chance: float = 0.0) -> float | None:
    """A person's flip rate from their answered attention checks; ``None`` before the first. ``chance``:
    how often a flipped answer passes a check anyway (:func:`check_chance`)."""
    if checks < 0 or not 0 <= correct <= checks:
        raise ConfigError(f"Expect 0 ≤ correct ≤ checks, got correct={correct}, checks={checks}.")
    if not 0.0 <= chance < 1.0:
        raise ConfigError(f"Expect a chance in [0, 1) that a flipped answer passes a check, got {chance}.")
    if checks == 0:
        return None
    alpha, beta = CHECK_PRIOR
    wrong = (checks - correct + alpha) / (checks + alpha + beta)  # P(a check fails) = ε · (1 − chance)
    return min(wrong / (1.0 - chance), MAX_NOISE)


def options_compared(kind: str, k: int | None = None) -> int:
    """The answers two agents' replies to one question are compared on: a triplet's 2 candidates, closest
    of ``k``'s and a ranking's first place ``k``, odd one out's 3 items."""
    if kind == "triplet":
        return 2
    if kind == "odd":
        return 3
    if kind in ("closest", "rank"):
        if k is None or k < 2:
            raise ConfigError(f"Expect k ≥ 2 candidates for {kind!r} questions, got k={k}.")
        return int(k)
    raise ConfigError(f"Expect a triplet or tuple kind (triplet, closest, rank, odd), got {kind!r}.")


def pair_signal(agree: float, options: int = 2) -> float:
    """``r_i r_j`` from two agents' agreement on questions of ``options`` answers.

    An agent of accuracy ``a`` (``r = (m·a − 1)/(m − 1)``: 1 always right, 0 at chance) whose wrong
    answers are spread evenly over the other ``m − 1`` options agrees with another, independently, with
    probability ``a_i a_j + (1 − a_i)(1 − a_j)/(m − 1) = 1/m + (m − 1)/m · r_i r_j``; so
    ``r_i r_j = (m·agree − 1)/(m − 1)`` (for a triplet ``2·agree − 1``)."""
    if options < 2:
        raise ConfigError(f"Expect a question with ≥ 2 possible answers, got options={options}.")
    return (options * agree - 1.0) / (options - 1)


def accuracy_from_signal(r: float, options: int = 2) -> float:
    """An agent's accuracy from its ``r`` (:func:`pair_signal`): ``(1 + (m − 1)·r) / m``, in [0, 1]."""
    return float(np.clip((1.0 + (options - 1) * r) / options, 0.0, 1.0))


def flip_rate_from_accuracy(accuracy: float, kind: str = "triplet", k: int = 2) -> float:
    """The learner's flip rate for a source of measured ``accuracy`` (its first place's, for a ranking):
    ``1 − accuracy``, or for rankings ``(1 − accuracy)/(1 − 1/k)`` — a flipped ranking is a random one,
    which still puts the right candidate first one time in ``k`` (:func:`check_chance`). Capped at
    :data:`MAX_NOISE`."""
    return float(min(max((1.0 - accuracy) / (1.0 - check_chance(kind, k)), 0.0), MAX_NOISE))


def flip_rate_from_swaps(both: int, agree: int, options: int = 2, flip_keeps: bool = False) -> float | None:
    """A flip rate from ``both`` questions answered in both candidate orders, ``agree`` of them alike;
    ``None`` below :data:`MIN_SWAPS` pairs.

    ``options``: the answers a question allows — a triplet's 2 candidates, closest-of-k's ``k``, odd one
    out's 3, a ranking's ``k!``. A flip gives one of the other options at random (``flip_keeps`` False:
    the triplet, choice and odd-one-out noise of :func:`fbloop.learners.losses._tuple_loss`) or any of
    them (True: a ranking's flip is a random ranking). Two independent answers then agree with probability
    ``(1 − e)² + e²/(options − 1)``, ``e`` the chance an answer is another option than the true one;
    solved for ``e`` (for a triplet ``(1 − √(1 − 2d))/2``, ``d`` the disagreement rate)."""
    if both < 0 or not 0 <= agree <= both:
        raise ConfigError(f"Expect 0 ≤ agree ≤ both, got agree={agree}, both={both}.")
    if options < 2:
        raise ConfigError(f"Expect a question with ≥ 2 possible answers, got options={options}.")
    if both < MIN_SWAPS:
        return None
    d = 1.0 - agree / both
    a = 1.0 + 1.0 / (options - 1)
    e = (1.0 - math.sqrt(max(1.0 - a * d, 0.0))) / a
    if flip_keeps:  # a flip lands on the true answer 1/options of the time
        e *= options / (options - 1)
    return min(e, MAX_NOISE)


class Sources:
    """The learner's source ids by answer name, in order of first sight."""

    def __init__(self, names: list[str] | tuple[str, ...] = ()):
        self.ids: dict[str, int] = {}
        for name in names:
            self.id(name)

    def id(self, name: str) -> int:
        return self.ids.setdefault(name, len(self.ids))

    def of(self, answers: Answers) -> int | np.ndarray:
        """One id for the answers, or one per answer where they are stored under several names."""
        if answers.agent == MIXED and answers.meta is not None:
            return np.array([self.id(m["agent"]) for m in answers.meta], dtype=np.int64)
        return self.id(answers.agent)

    def named(self, eps: dict[int, float]) -> dict[str, float]:
        """``{id: ε}`` as ``{name: ε}`` (for readouts)."""
        names = {i: n for n, i in self.ids.items()}
        return {names[i]: e for i, e in eps.items() if i in names}
