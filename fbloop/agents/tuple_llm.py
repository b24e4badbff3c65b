"""The LLM agent for tuple questions: closest of ``k``, rank ``k``, odd one out.

:class:`TupleLLMAgent` is the :class:`fbloop.agents.llm.LLMAgent` — the same client, retries,
structured-output probe, cache, usage and stored metadata — asking one tuple question per request
in the kind's template (``prompts/closest.txt``, ``rank.txt``, ``odd.txt``) and reading the reply
strictly (:mod:`fbloop.agents.tuple_prompts`). Choices for now: one question per request
(``batch_size`` 1: a closest-of-8 prompt already shows nine activations), and no order swap (a
triplet's two candidate orders; for ``k`` candidates a random reorder is future work).
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
        if config.batch_size != 1 or config.order_swap:
            raise ConfigError(f"{kind} questions are asked one per request without an order swap for now; got "
                              f"batch_size={config.batch_size}, order_swap={config.order_swap}.")
        super().__init__(config, descriptions, cache, prompt_dir)
        self.kinds = (kind,)
        self.kind, self.k = kind, 3 if kind == "odd" else k
        self.single = prompts.load(tuple_prompts.TEMPLATES[kind], prompt_dir)
        self.template_name = self.single.name
        self.template_hash = prompts.combined_hash(self.system, self.single)

    def _texts(self, queries: Queries) -> list[dict[str, str]]:
        top, desc = self.config.top_features, self.descriptions
        return [tuple_prompts.blocks(queries, i, desc, top) for i in range(len(queries))]

    def _prompt(self, blocks: list[dict[str, str]]) -> str:
        (b,) = blocks
        return self.single.render(**b)

    def _parse(self, req: _Request, rep: Reply) -> dict[int, tuple[float | None, str | None]]:
        return {0: tuple_prompts.parse(self.kind, rep.text, self.k)}

    def _reply_error(self, text: str, ids: list[int]) -> str | None:
        return tuple_prompts.parse(self.kind, text, self.k)[1]

    def _fields(self, mode: str, n: int) -> dict:
        return request_fields(mode, False, None, tuple_prompts.shapes(self.kind, self.k))

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
        return self._prompt(self._texts(q)), []
