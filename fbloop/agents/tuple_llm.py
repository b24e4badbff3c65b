"""The LLM agent for tuple questions: closest of ``k``, rank ``k``, odd one out.

:class:`TupleLLMAgent` is the :class:`fbloop.agents.llm.LLMAgent` — the same client, retries,
structured-output probe, cache, usage and stored metadata — asking one tuple question per request
in the kind's template (``prompts/closest.txt``, ``rank.txt``, ``odd.txt``; with ``batch_size`` > 1,
``<kind>_batch.txt`` holding that many questions under ``tuple_item.txt`` headers) and reading the
reply strictly (:mod:`fbloop.agents.tuple_prompts`). No order swap yet (a triplet's two candidate
orders; for ``k`` candidates a random reorder is future work).
"""

from __future__ import annotations

import numpy as np

from .. import prompts
from ..errors import ConfigError
from ..records import TUPLE_KINDS, Queries
from ..sparse import SparseBatch
from . import tuple_prompts
from .llm import LLMAgent, LLMConfig, _Request
from .transport import Reply
from .structured import request_fields


class TupleLLMAgent(LLMAgent):
    """Asks ``kind`` questions (``closest``, ``rank`` with ``k`` candidates, or ``odd``) of a chat model."""

    def __init__(self, config: LLMConfig, kind: str, k: int, descriptions: tuple[str, ...] | None = None,
                 cache=None, prompt_dir=None):
        if kind not in TUPLE_KINDS:
            raise ConfigError(f"Expect a tuple kind {list(TUPLE_KINDS)}, got {kind!r}.")
        if config.order_swap:
            raise ConfigError(f"{kind} questions are asked in the order stored (no order swap yet); got "
                              f"order_swap={config.order_swap}.")
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

    def _texts(self, queries: Queries) -> list[dict[str, str]]:
        top, desc = self.config.top_features, self.descriptions
        return [tuple_prompts.blocks(queries, i, desc, top) for i in range(len(queries))]

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
