"""Ground-truth feature matrices ``Φ* = Dᵀ D``.

Every target is held as a factor ``V`` of shape ``(p, k)`` with ``Φ* = V Vᵀ``
(for a dictionary ``D`` of shape ``(d, p)``, ``V = Dᵀ``). The oracle, the
factored PCC and the eigendecomposition design all work from ``V``, so a
``p = 32768`` target never has to be formed as a dense ``p × p`` matrix.

Target specs are short strings, stored with every run::

    synthetic:p=40,rank=5,d=64,norms=unit,coherence=0.0,seed=0
    chessgpt                    (the paper's ChessGPT SAE shape: p = 4096, d = 512, rank 512)
    pythia                      (the paper's Pythia-70M SAE shape: p = 32768, d = 512, rank 215)
    rfm                         (the paper's Figure 1 RFM, p = 10)
    rfm:figure=2,seed=0
    phi:path/to/phi.npy         (a p × p feature matrix)
    dict:path/to/dictionary.safetensors   (a (d, p) dictionary; key "D", "W_dec" or the only tensor)
    saelens:path/to/sae_dir     (a SAELens cfg.json + sae_weights.safetensors; D = W_decᵀ)
    dictlearn:path/to/ae_dir    (a dictionary_learning ae.pt + config.json, or checkpoints/ae_<step>.pt)
    sparsify:path/to/layers.6   (an EleutherAI sparsify cfg.json + sae.safetensors)
    gemmascope:path/to/params.npz   (a Gemma Scope JumpReLU SAE)
    saelens:DIR;descriptions=FILE;explanation_model=NAME;force_descriptions=1

``chessgpt`` and ``pythia`` are synthetic targets with the *shapes* of the
paper's Figure 3 and Figure 5 dictionaries (whose weights cannot be downloaded
here): unit-norm atoms drawn as in :func:`synthetic`; they take the synthetic
parameters too (``chessgpt:seed=1,coherence=0.1``).

The checkpoint kinds also take a file inside the directory; their ``Φ*`` is what
the package's loader decodes (see :mod:`fbloop.targets.checkpoints`), and they attach
the Neuronpedia explanations found beside them or named by ``descriptions=``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np

from ..errors import ConfigError, NonFiniteError, NonPSDError, ShapeError

RANK_TOL = 1e-6  # eigenvalues below RANK_TOL × largest count as zero (numerical rank)
# Largest p for which fbloop forms a dense p × p matrix (Φ*, a full eigenbasis): 16384² float64 is 2 GiB.
DENSE_P_LIMIT = 16_384
# Factors with more entries than this take their SVD from the k × k Gram matrix (O(p·k²), one GEMM)
# instead of LAPACK's SVD of the p × k factor (slower, and a workspace several times the factor).
GRAM_SVD_ABOVE = 1 << 25


def check_dense(p: int, what: str) -> None:
    """Refuse a dense ``p × p`` allocation above :data:`DENSE_P_LIMIT`, saying what asked for it."""
    if p > DENSE_P_LIMIT:
        gib = p * p * 8 / 2**30
        raise ConfigError(f"{what} needs a dense p × p matrix: p = {p} would take {gib:.0f} GiB; fbloop forms "
                          f"one only for p ≤ {DENSE_P_LIMIT} (DENSE_P_LIMIT). Use the factored paths "
                          "(the eigen design's thin basis, pcc_factored) instead.")


@dataclass(frozen=True, eq=False)
class Target:
    """A ground-truth ``Φ* = V Vᵀ`` with inspectable rank and spectrum."""

    name: str
    factor: np.ndarray  # (p, k) V, Φ* = V Vᵀ
    descriptions: tuple[str, ...] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        raw = np.asarray(self.factor)
        # A large float32 factor (a float32 checkpoint's decoder) stays float32: every product below
        # takes it to float64 a block of rows at a time, so the values are the same as a float64 copy's
        # and the copy (1 GiB at p = 262,144, k = 512) is never made. Anything else becomes float64.
        keep32 = raw.dtype == np.float32 and raw.size > GRAM_SVD_ABOVE
        v = raw if keep32 else np.asarray(raw, dtype=np.float64)
        if v.ndim != 2 or v.shape[0] < 2 or v.shape[1] < 1:
            raise ShapeError(f"Expect a factor of shape (p, k) with p ≥ 2, got {v.shape}.")
        if not np.all(np.isfinite(v)):
            raise NonFiniteError(f"Target {self.name!r} holds NaN or Inf.")
        if not np.any(v):
            raise NonPSDError(f"Target {self.name!r} is the zero matrix: no features to recover.")
        if self.descriptions is not None and len(self.descriptions) != v.shape[0]:
            raise ShapeError(
                f"Expect {v.shape[0]} feature descriptions, got {len(self.descriptions)}."
            )
        v.setflags(write=False)
        object.__setattr__(self, "factor", v)

    @property
    def p(self) -> int:
        return self.factor.shape[0]

    @cached_property
    def _svd(self) -> tuple[np.ndarray | None, np.ndarray]:
        # Left singular vectors of V are Φ*'s eigenvectors; σ² its eigenvalues.
        if self.factor.size <= GRAM_SVD_ABOVE:
            q, s, _ = np.linalg.svd(self.factor, full_matrices=False)
            return q, s**2
        # Large p: eigenvectors W of the k × k Gram VᵀV give Q = V W / σ for the eigenvalues above
        # the rank tolerance (σ ≥ 1e-3 σ₁, so Q stays orthonormal to ~1e-10); the rest are 0. Q is
        # (p, rank), as large as V: it is formed on demand (range_vectors), never cached.
        import scipy.linalg  # here: `fbloop target` should not pay its import

        lam, w = scipy.linalg.eigh(self._gram)  # scipy's driver: 0.3 s at k = 512 where numpy's took seconds
        lam, w = np.clip(lam[::-1], 0.0, None), w[:, ::-1]
        keep = int(np.sum(lam > RANK_TOL * lam[0]))
        lam[keep:] = 0.0
        object.__setattr__(self, "_gram_vectors", np.ascontiguousarray(w[:, :keep] / np.sqrt(lam[:keep])))
        return None, lam

    @cached_property
    def _gram(self) -> np.ndarray:
        """``VᵀV`` (``k × k``): it shares ``Φ* = V Vᵀ``'s nonzero eigenvalues.

        Eigenvalues from it cost O(p·k²) and no ``p × k`` SVD workspace: at the Pythia shape
        (p = 32768, k = 512) under a second where the SVD took ~12 s. They lose nothing that
        matters here: their error is ~1e-16 of the largest, far below ``RANK_TOL``.
        """
        if self.factor.dtype == np.float64:
            return self.factor.T @ self.factor
        gram = np.zeros((self.factor.shape[1],) * 2)
        for lo, block in self._blocks():
            gram += block.T @ block
        return gram

    def _blocks(self, rows: int = 65_536):
        """``(first row, rows of V in float64)``, a block at a time (for a float32 factor)."""
        for lo in range(0, self.p, rows):
            yield lo, np.asarray(self.factor[lo:lo + rows], dtype=np.float64)

    def _times(self, w: np.ndarray, order: str = "C") -> np.ndarray:
        """``V W`` in float64, a block of rows at a time when ``V`` is float32."""
        if self.factor.dtype == np.float64:
            return np.asarray(self.factor @ w, order=order)
        out = np.empty((self.p, w.shape[1]), order=order)
        for lo, block in self._blocks():
            out[lo:lo + len(block)] = block @ w
        return out

    @cached_property
    def eigenvalues(self) -> np.ndarray:
        """All ``p`` eigenvalues of ``Φ*``, descending (zeros past ``k``); read-only."""
        ev = np.zeros(self.p)
        lam = np.clip(np.linalg.eigvalsh(self._gram)[::-1], 0.0, None)
        ev[: len(lam)] = lam
        ev.setflags(write=False)
        return ev

    def range_factor(self) -> np.ndarray:
        """A ``(p, rank)`` factor of ``Φ*``: the same matrix, only its numerical range kept (``V W``,
        ``W`` the Gram matrix's leading eigenvectors)."""
        import scipy.linalg  # here: `fbloop target` should not pay its import

        _, w = scipy.linalg.eigh(self._gram)
        return self._times(w[:, ::-1][:, : self.rank])

    @property
    def rank(self) -> int:
        ev = self.eigenvalues
        return int(np.sum(ev > RANK_TOL * ev[0]))

    def range_vectors(self) -> np.ndarray:
        """The ``rank`` leading eigenvectors ``(p, rank)`` (orthonormal): they span ``Φ*``'s range.

        A fresh Fortran-ordered array each call (the caller owns it)."""
        q, _ = self._svd
        if q is None:  # large factor: Q = V W σ⁻¹, computed now, Fortran-ordered (no copy for a QR)
            if self.factor.dtype == np.float64:
                return (self._gram_vectors[:, : self.rank].T @ self.factor.T).T
            return self._times(self._gram_vectors[:, : self.rank], order="F")
        return np.asfortranarray(q[:, : self.rank])  # a copy: the caller may overwrite it

    def eigenvectors(self) -> np.ndarray:
        """Orthonormal ``(p, p)`` eigenvector matrix, columns matching ``eigenvalues``.

        The leading ``rank`` columns span ``Φ*``'s range; the rest complete the basis.
        Dense ``p × p``: refused above :data:`DENSE_P_LIMIT` (the eigen design uses
        :meth:`range_vectors` and an implicit complement instead).
        """
        check_dense(self.p, f"The eigenvectors of target {self.name!r}")
        q = self.range_vectors()
        # Complete the basis with the null space (dense p×p: only for constructive designs).
        full, _ = np.linalg.qr(np.hstack([q, np.eye(self.p)]))
        full = full[:, : self.p]
        full[:, : self.rank] = q  # keep the exact range vectors (QR may flip signs)
        return full

    def phi(self) -> np.ndarray:
        """Dense ``Φ* = V Vᵀ``; ``p × p``, so only for ``p ≤ DENSE_P_LIMIT``."""
        check_dense(self.p, f"Φ* of target {self.name!r}")
        return self.factor @ self.factor.T

    def summary(self) -> dict:
        ev = self.eigenvalues
        return {
            "name": self.name,
            "p": self.p,
            "rank": self.rank,
            "top_eigenvalues": [float(x) for x in ev[: min(8, self.p)]],
            **{k: v for k, v in self.meta.items() if isinstance(v, (int, float, str))},
        }


# ---------------------------------------------------------------- constructors


@dataclass(frozen=True)
class SyntheticConfig:
    """A random dictionary ``D`` (``d × p``) whose atoms span a ``rank``-dim subspace."""

    p: int = 40
    rank: int = 5
    d: int | None = None  # representation dimension; defaults to max(rank, p)
    norms: Literal["unit", "lognormal"] = "unit"  # atom norms
    coherence: float = 0.0  # expected cosine between atoms, in [0, 1)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.p < 2:
            raise ConfigError(f"Expect p ≥ 2, got p={self.p}.")
        d = self.d if self.d is not None else max(self.rank, self.p)
        if d < 1:
            raise ConfigError(f"Expect d ≥ 1, got d={self.d}.")
        if not 1 <= self.rank <= min(d, self.p):
            raise ConfigError(f"Expect 1 ≤ rank ≤ min(d, p) = {min(d, self.p)}, got rank={self.rank}.")
        if self.norms not in ("unit", "lognormal"):
            raise ConfigError(f"Expect norms 'unit' or 'lognormal', got {self.norms!r}.")
        if not 0.0 <= self.coherence < 1.0:
            raise ConfigError(f"Expect coherence in [0, 1), got {self.coherence}.")


def synthetic(config: SyntheticConfig) -> Target:
    """Atoms ``D[:, j] = Q c_j`` with ``Q`` an orthonormal ``d × rank`` basis.

    ``c_j = sqrt(1 − ρ) g_j + sqrt(ρ) g_0`` with Gaussian ``g`` gives pairwise
    cosines near ``ρ = coherence``; atoms are then scaled to unit norm or to
    log-normal norms (σ = 0.5).
    """
    rng = np.random.default_rng(config.seed)
    d = config.d if config.d is not None else max(config.rank, config.p)
    q, _ = np.linalg.qr(rng.standard_normal((d, config.rank)))  # (d, r)
    g0 = rng.standard_normal((config.rank, 1))
    c = np.sqrt(1 - config.coherence) * rng.standard_normal((config.rank, config.p))
    c += np.sqrt(config.coherence) * g0  # (r, p)
    c /= np.linalg.norm(c, axis=0, keepdims=True)
    if config.norms == "lognormal":
        c *= rng.lognormal(0.0, 0.5, size=config.p)
    dictionary = q @ c  # (d, p)
    return from_dictionary(dictionary, name=f"synthetic(p={config.p},rank={config.rank})",
                           meta={"d": d, "coherence": config.coherence, "norms": config.norms})


def from_dictionary(dictionary: np.ndarray, *, name: str = "dictionary",
                    descriptions: tuple[str, ...] | None = None, meta: dict | None = None) -> Target:
    """Target from a dictionary ``D`` of shape ``(d, p)``: atoms are columns."""
    D = np.asarray(dictionary)
    if not (D.dtype == np.float32 and D.size > GRAM_SVD_ABOVE):  # a large float32 D stays float32 (Target)
        D = np.asarray(D, dtype=np.float64)
    if D.ndim != 2:
        raise ShapeError(f"Expect a dictionary of shape (d, p), got {D.shape}.")
    if not np.all(np.isfinite(D)):
        raise NonFiniteError(f"Dictionary {name!r} holds NaN or Inf.")
    v = D.T  # (p, d)
    if v.shape[1] > v.shape[0]:
        # d > p: compress to a (p, p) factor with the same V Vᵀ.
        v = np.linalg.qr(v.T, mode="r").T
    return Target(name, v, descriptions, {"kind": "dictionary", **(meta or {})})


def from_phi(phi: np.ndarray, *, name: str = "phi", tol: float = 1e-8,
             descriptions: tuple[str, ...] | None = None) -> Target:
    """Target from a symmetric PSD ``Φ`` (``p × p``); rejects anything else.

    ``tol`` is relative to the largest absolute entry / eigenvalue.
    """
    phi = np.asarray(phi, dtype=np.float64)
    if phi.ndim != 2 or phi.shape[0] != phi.shape[1]:
        raise ShapeError(f"Expect a square feature matrix Φ, got shape {phi.shape}.")
    if not np.all(np.isfinite(phi)):
        raise NonFiniteError(f"Φ {name!r} holds NaN or Inf.")
    scale = float(np.max(np.abs(phi))) or 1.0
    asym = float(np.max(np.abs(phi - phi.T)))
    if asym > tol * scale:
        raise NonPSDError(f"Φ {name!r} is not symmetric: max |Φ − Φᵀ| = {asym:.3g}.")
    lam, vec = np.linalg.eigh((phi + phi.T) / 2)
    if lam[0] < -tol * max(lam[-1], scale) * phi.shape[0]:
        raise NonPSDError(f"Φ {name!r} is not PSD: smallest eigenvalue {lam[0]:.3g} "
                          f"(largest {lam[-1]:.3g}).")
    if lam[-1] <= 0:
        raise NonPSDError(f"Φ {name!r} is the zero matrix: no features to recover.")
    keep = lam > RANK_TOL * lam[-1]
    v = vec[:, keep] * np.sqrt(lam[keep])
    return Target(name, v[:, ::-1], descriptions, {"kind": "phi"})
