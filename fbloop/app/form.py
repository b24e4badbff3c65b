"""What the annotation form shows, computed outside the UI: each block of a question as a compact
feature table, the features blocks share (marked and aligned), the buttons and words of each kind of
question (triplet, closest of ``k``, rank ``k``, odd one out), why a ranking cannot be stored yet, and
the practice triplets. Pure functions of rendered features (:class:`fbloop.render.Feature`) and plain
values; :mod:`fbloop.app.views` has the dashboard's.
"""

from __future__ import annotations

import html

import numpy as np

from .. import render
from ..agents import questions


# ---------------------------------------------------------------- the form's feature tables


def feature_table(features: list, shared: set[int], title: str) -> str:
    """One activation as a compact HTML table: feature, weight bar, description.

    Features also active in another block of the triplet (``shared``) are highlighted and
    marked ◆; a feature without a description says so in grey italics instead of a
    placeholder sentence. Every value from data is HTML-escaped.
    """
    top = max([abs(f.weight) for f in features] + [1e-12])
    rows = []
    for f in features:
        width = int(round(100 * abs(f.weight) / top))
        colour = "#4c78a8" if f.weight >= 0 else "#e45756"
        placeholder = f.description == render.PLACEHOLDER.format(index=f.index)
        desc = ('<span style="color:#888;font-style:italic">no description</span>' if placeholder
                else html.escape(f.description))
        mark = "◆ " if f.index in shared else ""
        style = ' style="background:#fff3c4"' if f.index in shared else ""
        rows.append(f'<tr{style}><td style="white-space:nowrap;padding:1px 6px">{mark}#{f.index}</td>'
                    f'<td style="width:90px;padding:1px 6px"><div title="{html.escape(render.weight_text(f.weight))}" '
                    f'style="background:{colour};height:10px;width:{width}%"></div></td>'
                    f'<td style="padding:1px 6px;font-variant-numeric:tabular-nums">{render.weight_text(f.weight)}</td>'
                    f'<td style="padding:1px 6px">{desc}</td></tr>')
    body = "".join(rows) or '<tr><td colspan="4" style="color:#888">(no active features)</td></tr>'
    return (f'<div style="font-size:0.9rem"><b>{html.escape(title)}</b><table style="width:100%;'
            f'border-collapse:collapse;margin:2px 0 8px 0">{body}</table></div>')


def shared_features(reference: list, first: list, second: list) -> dict[str, set[int]]:
    """Which features of each block also appear in another block: ``{"reference", "first", "second"}``."""
    ref, (a, b) = shared_blocks(reference, [first, second])
    return {"reference": ref, "first": a, "second": b}


def shared_blocks(reference: list | None, options: list[list]) -> tuple[set[int], list[set[int]]]:
    """Features to mark ◆: the reference's that some option has, and each option's that the reference
    has. Without a reference (odd one out) each item's features that another item has."""
    ids = [{f.index for f in block} for block in options]
    if reference is None:
        return set(), [own & set().union(*(x for j, x in enumerate(ids) if j != i)) for i, own in enumerate(ids)]
    ref = {f.index for f in reference}
    return ref & set().union(*ids), [own & ref for own in ids]


def aligned(reference: list | None, *options: list) -> tuple[list, ...]:
    """The blocks with shared features first, in the reference's order, so that a feature the reference
    shares with a candidate sits on the same row in both tables; the rest keep their order (strongest
    first). Without a reference (``None``, odd one out) the items' shared features lead, in the order
    they first appear; the reference stays ``None``."""
    if reference is None:
        order: dict[int, int] = {}
        for f in (f for block in options for f in block):
            order.setdefault(f.index, len(order))
        _, shared = shared_blocks(None, list(options))
    else:
        order = {f.index: i for i, f in enumerate(reference)}
        shared = [set(order)] * len(options)

    def lead(block: list, keep: set[int]) -> list:
        return sorted([f for f in block if f.index in keep], key=lambda f: order[f.index]) + \
            [f for f in block if f.index not in keep]

    if reference is None:
        return (None, *(lead(block, keep) for block, keep in zip(options, shared)))
    in_options = set().union(*({f.index for f in block} for block in options))
    return (lead(reference, in_options), *(lead(block, set(order)) for block in options))


# ---------------------------------------------------------------- the form's words for each kind of question


def question_noun(kind: str, n: int = 2) -> str:
    """What the form calls ``n`` questions of a kind: triplet(s), or question(s) for tuple questions."""
    word = "triplet" if kind == "triplet" else "question"
    return word if n == 1 else word + "s"


def option_titles(kind: str, k: int) -> list[str]:
    """The titles of a question's option tables: first / second candidate, candidate 1…k, item 1…3."""
    if kind == "triplet":
        return ["First candidate", "Second candidate"]
    return [f"{'Item' if kind == 'odd' else 'Candidate'} {j}" for j in range(1, k + 1)]


def answer_buttons(kind: str, k: int) -> list[tuple[object, str, str | None]]:
    """The form's answer buttons for a question, in order: ``(answer, label, shortcut key)``, the answer
    as :func:`fbloop.agents.people.submit` takes it. Closest: a button per candidate (keys 1…9), no clear
    winner (N), skip (S); odd one out: a button per item (1…3) and skip; rank: skip only (the ranking is
    built in a list first); triplet: first (1), equal (E), skip (S), second (2)."""
    if kind == "triplet":
        return [("first", "◀ Closer to first", "1"), ("equal", "Equally close", "E"), ("skip", "Skip", "S"),
                ("second", "Closer to second ▶", "2")]
    skip = [(questions.SKIP, "Skip", "S")]
    if kind == "rank":
        return skip
    numbered = [(j, f"{'Item' if kind == 'odd' else 'Candidate'} {j}", str(j) if j <= 9 else None)
                for j in range(1, k + 1)]
    return numbered + ([(0, "No clear winner", "N")] if kind == "closest" else []) + skip


def answer_label(kind: str, answer: object) -> str:
    """An answer as the form's receipt says it: ``closer to first``, ``candidate 2``, ``no clear winner``,
    ``item 3``, ``ranking 2 › 1 › 4 › 3``, ``skip``."""
    if isinstance(answer, str):
        return {"first": "closer to first", "second": "closer to second", "equal": "equally close",
                questions.NONE: "no clear winner"}.get(answer, answer)
    if isinstance(answer, (list, tuple)):
        return "ranking " + " › ".join(str(j) for j in answer)
    if kind == "closest" and answer == 0:
        return "no clear winner"
    return f"{'item' if kind == 'odd' else 'candidate'} {answer}"


def ranking_problem(order: list[int], k: int) -> str | None:
    """Why a ranking built in the form cannot be stored yet (``None``: it can): candidates missing, or
    one placed twice."""
    order = [int(j) for j in order]
    unknown = sorted({j for j in order if not 1 <= j <= k})
    if unknown:
        return f"There is no candidate {', '.join(map(str, unknown))}: the candidates are 1 to {k}. Nothing was stored."
    twice = sorted({j for j in order if order.count(j) > 1})
    if twice:
        return (f"Candidate {', '.join(map(str, twice))} is placed more than once; place each of the {k} "
                "candidates once, closest first. Nothing was stored.")
    if sorted(order) != list(range(1, k + 1)):
        missing = [j for j in range(1, k + 1) if j not in order]
        return (f"Place all {k} candidates, closest first: {len(order)} placed, candidate"
                f"{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} still to place. "
                "Nothing was stored.")
    return None


def practice_triplets(p: int, descriptions: tuple[str, ...] | None, n: int = 3, seed: int = 0) -> list[dict]:
    """``n`` easy triplets with known answers for the form's practice round (never stored as answers).

    The reference shares its strongest feature with the right candidate; the other candidate has
    unrelated features. ``[{"reference", "first", "second", "answer", "why"}]`` with features as
    :class:`fbloop.render.Feature` lists.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a, b, c, d = (int(x) for x in rng.choice(p, size=4, replace=p < 4))

        def feat(index: int, weight: float) -> render.Feature:
            text = descriptions[index] if descriptions is not None and descriptions[index] else ""
            text = " ".join(str(text).split())[:render.MAX_DESCRIPTION] or render.PLACEHOLDER.format(index=index)
            return render.Feature(index, weight, text)

        ref = [feat(a, 1.0), feat(b, 0.2)]
        close, far = [feat(a, 0.9)], [feat(c, 0.8), feat(d, 0.3)]
        answer = "first" if i % 2 == 0 else "second"
        first, second = (close, far) if answer == "first" else (far, close)
        out.append({"reference": ref, "first": first, "second": second, "answer": answer,
                    "why": f"the {answer} candidate shares the reference's strongest feature, #{a}"})
    return out
