"""A run's learner: which one (:func:`choose_learner`), building it, and giving it the answers
(:func:`feed`), less the held-out ones (:class:`HeldOut`)."""

from __future__ import annotations

import numpy as np

from .. import metrics, seeding
from ..errors import ConfigError
from ..learners import GradientLearner, LearnerConfig
from ..queries.active_tuples import answered_first, predicted_first
from ..queries.designs import Design
from ..records import Answers, Queries
from ..sparse import SparseBatch
from .config import RunConfig

EXACT_MAX_P = 40  # "auto" uses the exact learner for pair runs up to this p
DIRECT_DESIGNS = ("constructive", "eigen")  # 1- and 2-sparse pairs: "auto" solves them directly above EXACT_MAX_P


# ---------------------------------------------------------------- learners


def choose_learner(config: RunConfig, design: Design) -> str:
    """The learner a run uses: ``auto`` picks pivot (the pivot design), exact (small p), direct or gradient."""
    from ..learners.direct import MAX_P as DIRECT_MAX_P

    if config.learner == "pivot" and design.config.name != "pivot":
        raise ConfigError(f"The pivot learner solves the pivot design's answers; got design "
                          f"{design.config.name!r}. Use --design pivot or another learner.")
    if config.learner != "auto":
        if config.learner in ("exact", "direct") and design.kind != "pair":
            raise ConfigError(f"The {config.learner} learner takes equality pairs; use --learner gradient "
                              f"for {design.kind} queries.")
        from ..learners.exact import ExactConfig

        max_p = ExactConfig().max_p
        if config.learner == "exact" and design.p > max_p:
            raise ConfigError(f"The exact learner handles p ≤ {max_p}, got p={design.p}; use --learner gradient.")
        if config.learner == "direct" and (design.config.name not in DIRECT_DESIGNS or design.p > DIRECT_MAX_P):
            raise ConfigError(f"The direct learner solves the {' and '.join(DIRECT_DESIGNS)} designs up to "
                              f"p = {DIRECT_MAX_P}; got design {design.config.name!r} at p={design.p}. "
                              "Use --learner gradient.")
        return config.learner
    if design.config.name == "pivot":
        return "pivot"
    if design.kind == "pair" and design.p <= EXACT_MAX_P:
        return "exact"
    if design.config.name in DIRECT_DESIGNS and design.p <= DIRECT_MAX_P:
        return "direct"
    return "gradient"


def make_learner(name: str, p: int, config: LearnerConfig, anchor: SparseBatch, design: Design | None = None):
    if name == "pivot":
        from ..learners.nystrom import PivotLearner

        return PivotLearner(design)  # type: ignore[arg-type]
    if name == "exact":
        from ..learners.exact import ExactLearner

        return ExactLearner(p, anchor)
    if name == "direct":
        from ..learners.direct import DirectLearner

        return DirectLearner(p)
    learner = GradientLearner(p, config, anchor)
    learner.name = "gradient"
    return learner


class HeldOut:
    """A run's held-out triplets or tuple questions: asked and stored like the others, never given to the learner.

    Which positions are held out is a pure function of ``(seed, seq)``
    (:func:`fbloop.seeding.held_out`), so a resumed run — replaying its stored
    answers — holds out the same ones. The first ``MAX_ROWS`` held-out ok answers
    are kept in memory; :meth:`agreement` scores ``Φ̂``'s predicted signs on them,
    the readout of a run with no ``Φ*`` (people, an LLM).
    """

    MAX_ROWS = 20_000

    def __init__(self, share: float, seed: int):
        self.share, self.seed = share, seed
        self._kept: list[tuple[Queries, np.ndarray]] = []
        self.n = 0

    def mask(self, seq: np.ndarray) -> np.ndarray:
        return seeding.held_out(self.seed, seq, self.share)

    def keep(self, queries: Queries, answers: Answers) -> None:
        """Remember the held-out ok answers among ``answers`` (to ``queries``, any order, a superset)."""
        rows = np.flatnonzero(answers.ok & self.mask(answers.seq))[: self.MAX_ROWS - self.n]
        if len(rows) == 0:
            return
        pos = {int(s): i for i, s in enumerate(queries.seq)}
        self._kept.append((queries.select(np.array([pos[int(s)] for s in answers.seq[rows]])),
                           answers.value[rows]))
        self.n += len(rows)

    def agreement(self, learner) -> float | None:
        """Share of the kept held-out answers ``learner``'s ``Φ̂`` predicts — a triplet's sign, a tuple
        answer's first place (the nearest candidate, the odd item; chance ``1/k``; a "no clear winner" is
        not scored) — ``None`` without any."""
        if not self.n or not hasattr(learner, "predict_triplets"):
            return None
        agree, n = 0.0, 0
        for q, v in self._kept:
            if q.kind == "triplet":
                agree += metrics.triplet_agreement(learner.predict_triplets(q.a, q.b, q.c), v) * len(v)
                n += len(v)
                continue
            first = answered_first(q, v)
            scored = first >= 0
            agree += float(np.sum(predicted_first(q, learner.factor())[scored] == first[scored]))
            n += int(scored.sum())
        return agree / n if n else None


def feed(learner, queries: Queries, answers: Answers, held: HeldOut | None = None,
         source: int | np.ndarray = 0) -> None:
    """Give the learner the ok answers of a chunk; held-out ones go to ``held`` instead.

    ``source`` names who gave them (:class:`fbloop.agents.reliability.Sources` ids: one, or one per
    answer), for a learner that weighs each source by its reliability.
    """
    ok = answers.ok
    if held is not None:
        held.keep(queries, answers)
        ok = ok & ~held.mask(answers.seq)
    if not ok.any():
        return
    pos = {int(s): i for i, s in enumerate(queries.seq)}
    rows = np.array([pos[int(s)] for s in answers.seq[ok]])
    q = queries.select(rows)
    if q.kind == "pair":
        learner.add_pairs(q.a, answers.value[ok])
        return
    # triplets and tuples always go to the gradient learner (choose_learner)
    src = source if np.ndim(source) == 0 else np.asarray(source)[ok]
    if q.kind == "triplet":
        learner.add_triplets(q.a, q.b, q.c, answers.value[ok], source=src)
    else:
        learner.add_tuples(q, answers.value[ok], source=src)
