"""The LLM agent for tuple questions: closest of ``k``, rank ``k``, odd one out.

:class:`TupleLLMAgent` is the :class:`fbloop.agents.llm.LLMAgent` — the same client, retries,
structured-output probe, cache, usage and stored metadata — asking one tuple question per request
in the kind's template (``prompts/closest.txt``, ``rank.txt``, ``odd.txt``; with ``batch_size`` > 1,
``<kind>_batch.txt`` holding that many questions under ``tuple_item.txt`` headers) and reading the
reply strictly (:mod:`fbloop.agents.tuple_prompts`).

**Order swap** (``order_swap``): every question is also asked with its candidates (odd one out: its
three items) in reverse order, in separate requests, stored under ``llm:<model>#swap`` in the stored
order (candidate ``j`` shown is stored candidate ``k + 1 − j``; :func:`fbloop.records.from_reversed`).
Reversing moves the first candidate last, so a model that favours a position answers differently in the
two orders: the summary's ``position_bias_rate`` is the share of questions answered in both orders whose
answers differ (a ranking: any difference), and the learner fits both sources at the flip rate that
disagreement implies (:func:`fbloop.agents.reliability.flip_rate_from_swaps` with the kind's options:
``k`` candidates, 3 items, or ``k!`` rankings).
"""

from __future__ import annotations

import math

import numpy as np

from .. import prompts
from ..errors import ConfigError
from ..records import TUPLE_KINDS, Queries, from_reversed
from ..sparse import SparseBatch
from . import tuple_prompts
from .llm import LLMAgent, LLMConfig, _Request
from .reliability import flip_rate_from_swaps
from .transport import Reply
from .structured import request_fields


class _Shown(dict):
    """A question's template variables in the stored order; ``reversed``: in the reverse order (the swap)."""

    reversed: dict[str, str] | None = None


class TupleLLMAgent(LLMAgent):
    """Asks ``kind`` questions (``closest``, ``rank`` with ``k`` candidates, or ``odd``) of a chat model."""

    def __init__(self, config: LLMConfig, kind: str, k: int, descriptions: tuple[str, ...] | None = None,
                 cache=None, prompt_dir=None):
        if kind not in TUPLE_KINDS:
            raise ConfigError(f"Expect a tuple kind {list(TUPLE_KINDS)}, got {kind!r}.")
        super().__init__(config, descriptions, cache, prompt_dir)
        self.kinds = (kind,)
        self.kind, self.k = kind, 3 if kind == "odd" else k
        self.single = prompts.load(tuple_prompts.TEMPLATES[kind], prompt_dir)
        if self.batched:
            self.batch = prompts.load(tuple_prompts.BATCH_TEMPLATES[kind], prompt_dir)
            self.item = prompts.load(tuple_prompts.ITEM_TEMPLATE, prompt_dir)
            self.template_name = self.batch.name
            self.template_hash = prompts.combined_hash(self.system, self.batch, self.item)
        else:
            self.template_name = self.single.name
            self.template_hash = prompts.combined_hash(self.system, self.single)

    def _texts(self, queries: Queries) -> list[_Shown]:
        """Each question's template variables as stored, with the reversed order's beside them when the
        order swap is on."""
        top, desc, swap = self.config.top_features, self.descriptions, self.config.order_swap
        out = []
        for i in range(len(queries)):
            shown = _Shown(tuple_prompts.blocks(queries, i, desc, top))
            if swap:
                shown.reversed = tuple_prompts.blocks(queries, i, desc, top, reverse=True)
            out.append(shown)
        return out

    @staticmethod
    def _shown(text: _Shown, order: str) -> dict[str, str]:
        return text if order == "ab" else text.reversed

    def _from_reversed(self, value: np.ndarray) -> np.ndarray:
        return from_reversed(self.kind, value, self.k)

    def _swap_flip_rate(self, both: int, agree: int) -> float | None:
        if self.kind == "rank":
            return flip_rate_from_swaps(both, agree, math.factorial(self.k), flip_keeps=True)
        return flip_rate_from_swaps(both, agree, self.k)

    def _prompt(self, blocks: list[dict[str, str]]) -> str:
        if not self.batched:
            (b,) = blocks
            return self.single.render(**b)
        items = [self.item.render(id=i + 1, question=tuple_prompts.question_text(b)).strip()
                 for i, b in enumerate(blocks)]
        extra = {"k": self.k} if "k" in self.batch.variables else {}  # odd one out: always three
        return self.batch.render(count=len(blocks), questions="\n\n".join(items), **extra)

    def _parse(self, req: _Request, rep: Reply) -> dict[int, tuple[float | None, str | None]]:
        if not self.batched:
            return {0: tuple_prompts.parse(self.kind, rep.text, self.k)}
        by_id = tuple_prompts.parse_batch(self.kind, rep.text, self.k, list(range(1, len(req.rows) + 1)))
        return {i: by_id[i + 1] for i in range(len(req.rows))}

    def _reply_error(self, text: str, ids: list[int]) -> str | None:
        if not self.batched:
            return tuple_prompts.parse(self.kind, text, self.k)[1]
        return next((why for _, why in tuple_prompts.parse_batch(self.kind, text, self.k, ids).values() if why), None)

    def _fields(self, mode: str, n: int) -> dict:
        shapes = tuple_prompts.shapes(self.kind, self.k, n if self.batched else None)
        return request_fields(mode, self.batched, n, shapes)

    def _probe_prompt(self) -> tuple[str, list[int]]:
        # The smallest real question of the run's kind: feature 0 at weight 1 against candidates
        # at feature 0 (weight 0.9) and feature 1, so the probe also shows the prompt is understood.
        p = max(2, len(self.descriptions) if self.descriptions else 2)
        n = self.k + (self.kind != "odd")
        idx = np.array([[0 if j < 2 else 1] for j in range(n)])
        val = np.array([[1.0 if j != 1 else 0.9] for j in range(n)])
        acts = [SparseBatch(idx[j:j + 1], val[j:j + 1], p) for j in range(n)]
        seq = np.array([0])
        q = (Queries("odd", seq, *acts) if self.kind == "odd"
             else Queries(self.kind, seq, acts[0], cands=tuple(acts[1:])))  # type: ignore[arg-type]
        blocks = self._texts(q) * (2 if self.batched else 1)
        return self._prompt(blocks), ([1, 2] if self.batched else [])
