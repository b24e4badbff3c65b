"""What the annotation form asks and how a person's answer is stored: :class:`Question` (one question
as the form shows it), :func:`answer_value` (an answer in its kind's own terms, checked, as the stored
value) and the attention checks built from a run's questions (:func:`make_checks` for triplets,
:func:`make_tuple_checks` for closest of ``k``, rank ``k`` and odd one out). :mod:`fbloop.agents.people`
queues, leases and stores them.

| kind | the person answers | stored value (:mod:`fbloop.records`) |
|---|---|---|
| triplet | ``first``, ``second``, ``equal`` | +1, −1, 0 |
| closest | a candidate ``1…k``, or ``0`` / ``"none"``: no clear winner | the number |
| rank | the candidates ``1…k``, closest first, each once | the ranking's Lehmer code |
| odd | an item ``1…3`` | the number |

and ``skip`` for every kind (status ``skipped``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .. import render
from ..errors import ConfigError
from ..records import Queries, codes_with_first, ranking_code
from ..sparse import SparseBatch, difference
from .choice import option_distances
from .oracle import triplet_margins

Choice = Literal["first", "second", "equal", "skip"]
CHOICES: dict[str, float] = {"first": 1.0, "second": -1.0, "equal": 0.0, "skip": math.nan}
SKIP = "skip"  # a skip, for every kind of question
NONE = "none"  # closest of k: no clear winner (stored as 0), besides the number 0
KINDS = ("triplet", "closest", "rank", "odd")  # the questions the form asks
Answer = str | int | list[int] | tuple[int, ...]  # a choice (triplet), a number (closest, odd), a ranking (rank)
LOPSIDED = 0.8  # |Δ| / (d_ab + d_ac) at or above which the oracle's answer counts as obvious


@dataclass(frozen=True)
class Question:
    """One question as the form shows it. ``token`` names this display of it.

    ``options`` are what the answer chooses among: a triplet's first and second candidates, the ``k``
    candidates of closest / rank, or the three items of odd one out (which has no ``reference``).
    """

    run_id: str
    seq: int
    annotator: str
    token: str
    reference: list[render.Feature] | None
    options: tuple[list[render.Feature], ...]
    kind: str = "triplet"

    @property
    def k(self) -> int:
        return len(self.options)

    @property
    def first(self) -> list[render.Feature]:
        return self.options[0]

    @property
    def second(self) -> list[render.Feature]:
        return self.options[1]

    def texts(self) -> dict[str, str]:
        """The blocks as text, exactly as an LLM prompt shows them: ``reference``, ``first``, ``second`` for
        a triplet; ``reference`` and ``candidate 1``… (closest, rank); ``item 1``… (odd one out)."""
        if self.kind == "triplet":
            return render.triplet_text(self.reference, self.first, self.second)
        label = "item" if self.kind == "odd" else "candidate"
        out = {} if self.reference is None else {"reference": render.as_text(self.reference)}
        return {**out, **{f"{label} {j + 1}": render.as_text(o) for j, o in enumerate(self.options)}}


def _whole(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def answer_value(kind: str, k: int, answer: Answer) -> tuple[str, float]:
    """One person's answer to a ``kind`` question with ``k`` options as it is stored: ``(status, value)``.

    ``skip`` is status ``skipped`` for every kind. Triplet: ``first``, ``second`` or ``equal``; closest:
    the candidate ``1…k``, or ``0`` / ``"none"`` for no clear winner; odd: the item ``1…3``; rank: the
    candidates ``1…k`` closest first, each once (stored as the ranking's Lehmer code). Anything else
    raises :class:`ConfigError` naming it.
    """
    if isinstance(answer, str) and answer == SKIP:
        return "skipped", math.nan
    if kind == "triplet":
        if not isinstance(answer, str) or answer not in CHOICES:
            raise ConfigError(f"Unknown answer {answer!r}; expect one of {list(CHOICES)}.")
        return "ok", CHOICES[answer]
    if kind == "rank":
        order = list(answer) if isinstance(answer, (list, tuple, np.ndarray)) else None
        if order is None or not all(_whole(j) for j in order) or sorted(int(j) for j in order) != list(range(1, k + 1)):
            raise ConfigError(f"Unknown answer {answer!r}; expect a ranking of the candidates 1…{k}, each once, "
                              f"closest first, or {SKIP!r}.")
        return "ok", float(ranking_code(np.array([order], dtype=np.int64) - 1)[0])
    if kind == "closest" and isinstance(answer, str) and answer == NONE:
        return "ok", 0.0
    low, what = (0, f"a candidate 1…{k} or 0 ({NONE!r}: no clear winner)") if kind == "closest" else \
        (1, f"an item 1…{k}")
    if kind not in KINDS or not _whole(answer) or not low <= int(answer) <= k:
        raise ConfigError(f"Unknown answer {answer!r} to a {kind} question; expect {what}, or {SKIP!r}.")
    return "ok", float(answer)


# ---------------------------------------------------------------- attention checks


def make_checks(queries: Queries, n: int, rng: np.random.Generator, factor: np.ndarray | None = None,
                first_seq: int = -1) -> tuple[Queries, dict[int, tuple[str, float]]]:
    """``n`` attention checks built from ``queries``, at positions ``first_seq, first_seq − 1, …``.

    Returns the checks as triplet :class:`Queries` and ``{seq: (kind, expected)}``.
    Half are ``lopsided`` when ``factor`` (``Φ* = V Vᵀ``) finds one-sided triplets, the rest ``identical``.
    """
    src = rng.integers(0, len(queries), size=n)  # (n,) the triplet each identical check starts from
    pool = np.empty(0, dtype=np.int64)
    if factor is not None:
        delta, total = triplet_margins(queries.a, queries.b, queries.c, factor)
        rel = np.where(total > 0, delta, 0.0) / np.where(total > 0, total, 1.0)  # in [−1, 1]
        pool = np.flatnonzero(np.abs(rel) >= LOPSIDED)
    lopsided = (rng.random(n) < 0.5) & (len(pool) > 0)
    first_side = rng.random(n) < 0.5  # identical checks: which candidate repeats the reference
    q = queries
    parts: tuple[list[SparseBatch], ...] = ([], [], [])  # reference, first, second rows
    kinds, expected = [], []
    for i in range(n):
        if lopsided[i]:  # candidates swapped, so the oracle's answer flips
            j = int(rng.choice(pool))
            shown, kind, want = (q.a, q.c, q.b), "lopsided", -float(np.sign(rel[j]))
        elif first_side[i]:
            j = int(src[i])
            shown, kind, want = (q.a, q.a, q.c), "identical", 1.0
        else:
            j = int(src[i])
            shown, kind, want = (q.a, q.b, q.a), "identical", -1.0
        for out, batch in zip(parts, shown):
            out.append(batch[j:j + 1])
        kinds.append(kind)
        expected.append(want)
    seq = first_seq - np.arange(n, dtype=np.int64)
    checks = {int(s): (k, e) for s, k, e in zip(seq, kinds, expected)}
    batches = (SparseBatch.concat(x) for x in parts)
    return Queries("triplet", seq, *batches), checks


def _differ(x: SparseBatch, y: SparseBatch) -> bool:
    """Whether two one-row batches are different activations (slots in any order, duplicates adding)."""
    d = difference(x, y)
    _, slot = np.unique(d.indices[0], return_inverse=True)
    return bool(np.any(np.bincount(slot, d.values[0]) != 0))


def _expected(kind: str, j: int, k: int) -> tuple[float, ...]:
    """What a check whose first place is option ``j`` (0-based, as shown) expects: ``j + 1``, or (rank) the
    range of codes of the rankings that put ``j`` first."""
    return codes_with_first(j, k) if kind == "rank" else (float(j + 1),)


def make_tuple_checks(queries: Queries, n: int, rng: np.random.Generator, factor: np.ndarray | None = None,
                      first_seq: int = -1) -> tuple[Queries, dict[int, tuple]]:
    """``n`` attention checks on tuple questions built from ``queries`` (closest, rank or odd), at positions
    ``first_seq, first_seq − 1, …``.

    ``identical``: candidate ``j`` (drawn) is replaced by the reference; expected: ``j`` (closest), or any
    ranking with ``j`` first (rank: ``(kind, lowest code, highest code)``). Odd one out: two items show the
    first item's activation and item ``i`` (drawn) a different one; expected: ``i``.
    ``lopsided`` (half of them when ``factor``, ``Φ* = V Vᵀ``, finds such questions): a queued question whose
    first place ``Φ*`` puts far ahead of the second (``(d₂ − d₁) / (d₁ + d₂) ≥ LOPSIDED`` on the options'
    distances), shown with its candidates (items) in reverse order so it is not a verbatim repeat; expected:
    that first place where it is shown. Returns the checks as :class:`Queries` of the same kind and
    ``{seq: (kind, expected)}`` or ``(kind, lowest, highest)``.
    """
    q = queries
    src = rng.integers(0, len(q), size=n)  # (n,) the question each check starts from
    pos = rng.integers(0, q.k, size=n)  # (n,) the identical candidate, or the odd item
    pool, winner = np.empty(0, dtype=np.int64), None
    if factor is not None:
        dist = option_distances(q, factor)
        winner = np.argmin(dist, axis=1)
        d = np.sort(dist, axis=1)
        gap = (d[:, 1] - d[:, 0]) / np.where(d[:, 0] + d[:, 1] > 0, d[:, 0] + d[:, 1], 1.0)
        pool = np.flatnonzero(gap >= LOPSIDED)
    lopsided = (rng.random(n) < 0.5) & (len(pool) > 0)
    seq = first_seq - np.arange(n, dtype=np.int64)
    built, checks = [], {}
    for i, (s, j) in enumerate(zip(seq.tolist(), pos.tolist())):
        if lopsided[i]:
            r = int(rng.choice(pool))
            row = q.select(np.array([r]))
            shown = q.k - 1 - int(winner[r])  # 0-based, candidates reversed
            if q.kind == "odd":
                built.append(Queries("odd", np.array([s]), row.c, row.b, row.a))
            else:
                built.append(Queries(q.kind, np.array([s]), row.a, cands=row.cands[::-1]))
            checks[s] = ("lopsided", *_expected(q.kind, shown, q.k))
            continue
        row = q.select(np.array([src[i]]))
        if q.kind == "odd":
            same = row.a
            other = row.b if _differ(row.a, row.b) else row.c
            items = [other if x == j else same for x in range(3)]
            built.append(Queries("odd", np.array([s]), *items))
            checks[s] = ("identical", float(j + 1))
            continue
        cands = tuple(row.a if x == j else c for x, c in enumerate(row.cands))
        built.append(Queries(q.kind, np.array([s]), row.a, cands=cands))
        checks[s] = ("identical", *_expected(q.kind, j, q.k))
    return Queries.concat(built), checks
