"""The loss terms of :class:`~fbloop.learners.GradientLearner`, as pure functions of tensors.

Losses
- equality pairs ``(u, c)`` against the anchor ``y``, ``q_i = ‖Uᵀu_i‖²``:
  ``mean_i ℓ(q_i, c_i) + (‖Uᵀy‖² − 1)² + λ‖U_rows‖²`` where ``ℓ`` is the paper's
  ``(q − c)²`` (``pair_loss="paper"``) or, by default, the root residual
  ``(√q − √c)²`` (``pair_loss="root"``). The two share their minimisers; the root
  form stays quadratic at ``c = 0`` (for a PSD ``Φ``, ``uᵀΦu = 0`` ⟺ ``Uᵀu = 0``),
  where the paper's quartic ``q²`` makes the eigendecomposition design's null
  pairs converge sublinearly.
  The anchor term fixes the scale at ``yᵀΦ̂y = 1`` — the exact form of the
  paper's "reset ``U[0,0] = 1``" (with ``y = e_0`` it pins ``Φ̂_00 = 1``), which
  also stops the collapse to ``U = 0``. The paper's ridge ``λ‖U‖²`` (``λ = 1e-4``)
  is available (``weight_decay``, applied to the rows a step touches) but off by
  default: at ``p = 4096`` a row sees ~3 pairs per 4096-pair batch, so ``λ``
  outweighs its data gradient (measured on a p = 1024, rank-128 sparse problem
  with 250k pairs: PCC 0.005 with λ = 1e-4 and lr 0.01 after 20 epochs, 0.99
  with λ = 0 and lr 3e-3).
- ternary triplets ``(a, b, c) → t ∈ {+1, −1, 0}``: with the scale-free margin
  ``ρ = (d_ac − d_ab) / (d_ac + d_ab)``, a logistic loss ``softplus(−κ t ρ)`` for
  ``t = ±1`` and a two-sided band loss keeping ``|ρ| ≤ band`` for ties.
- noisy sources: each triplet carries the id of the source that answered it
  (``add_triplets(..., source=)``), and :meth:`GradientLearner.set_source_noise`
  gives a source's flip rate ``ε ∈ [0, 0.5)``. Its ``±1`` answers then cost the
  negative log-likelihood of an answer that is flipped with probability ``ε``,
  ``−log(ε + (1 − 2ε)·σ(κ t ρ))`` — computed as
  ``−logaddexp(log ε, log(1 − 2ε) − softplus(−κ t ρ))``, exactly
  ``softplus(−κ t ρ)`` at ``ε = 0`` — and its ties the band loss × ``(1 − 2ε)``.
  A wrong answer far from the boundary then costs at most ``−log ε`` instead of
  ``κ|ρ|``, so a few flipped answers no longer pull ``Φ̂`` towards them.
  Every source's ``ε`` is 0 until set, and the loss is then the logistic one
  above. Measured at the default settings (p = 32, rank 8, 5,000 Gaussian
  triplets answered by the noise-free oracle, a random share of one source's
  answers then flipped; seeds 0–2; PCC and the rank found):

  ==============================  ===================  =====================
  answers                         ε = 0                true ε
  ==============================  ===================  =====================
  one source flipping 10%         0.901, 0.901, 0.917  0.987, 0.984, 0.990
                                  (rank 22–24)         (rank 8)
  one source flipping 30%         0.654, 0.660, 0.669  0.757, 0.738, 0.764
                                  (rank 27–29)         (rank 16–18)
  2,500 exact + 2,500 at 10%      0.946, 0.946, 0.956  0.995, 0.995, 0.996
  2,500 exact + 2,500 at 30%      0.856, 0.839, 0.876  0.991, 0.989, 0.992
  ==============================  ===================  =====================

  (the mixes: rank 21–26 with ε = 0, 8 with the true ε).
- tuple answers (closest of ``k``, rank ``k``, odd one out; :func:`_tuple_loss`): softmax and
  Plackett–Luce likelihoods on the scale-free logits ``−κ·d / (2·mean d)`` of the options' distances
  under ``Φ̂`` — for ``k = 2`` the triplet's logistic loss — with the same per-source flip rates. In a
  fit they are averaged apart from the triplets (each kind's mean loss is one term).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _pair_residual(q: torch.Tensor, c: torch.Tensor, form: str) -> torch.Tensor:
    """Per-pair loss ``ℓ(q, c)``: ``(q − c)²`` or ``(√q − √c)²``."""
    if form == "paper":
        return (q - c) ** 2
    return (torch.sqrt(q + 1e-30) - torch.sqrt(c)) ** 2


def _triplet_loss(d_ab: torch.Tensor, d_ac: torch.Tensor, t: torch.Tensor, kappa: float | torch.Tensor, band: float,
                  eps: torch.Tensor | None = None) -> torch.Tensor:
    """Per-triplet loss on the scale-free margin ``ρ = (d_ac − d_ab)/(d_ac + d_ab)``, all ``(n,)``.

    ``softplus(−κ t ρ)`` for ``t = ±1``; for a tie (``t = 0``) a two-sided band loss keeping ``|ρ| ≤ band``.
    With ``eps`` (each answer's flip rate ``ε``, ``(n,)``): the flip-robust ``−log(ε + (1−2ε)·σ(κtρ))``
    for ``t = ±1`` — the likelihood of the answer when its source flips a fraction ``ε`` of them — and
    the band loss scaled by ``1 − 2ε`` for ties.
    """
    rho = (d_ac - d_ab) / (d_ac + d_ab + 1e-30)
    sp = F.softplus
    z = kappa * t * rho
    tie = sp(kappa * (rho - band)) + sp(-kappa * (rho + band))
    if eps is None:
        return torch.where(t != 0, sp(-z), tie)
    # log(ε + (1−2ε)σ(z)) = logaddexp(log ε, log(1−2ε) + log σ(z)), log σ(z) = −softplus(−z): no
    # cancellation for any z, and for ε = 0 it is −softplus(−z) exactly (logaddexp(−∞, x) = x).
    robust = -torch.logaddexp(torch.log(eps), torch.log1p(-2 * eps) - sp(-z))
    return torch.where(t != 0, robust, (1 - 2 * eps) * tie)


def _pair_quads(rows_u: torch.Tensor, inv: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """``‖Uᵀa‖²`` per activation from gathered rows: ``inv``/``val`` are ``(n, s)``."""
    proj = torch.einsum("ns,nsr->nr", val, rows_u[inv])  # (n, r)
    return (proj * proj).sum(dim=1)


def _tuple_loss(d: torch.Tensor, obs: torch.Tensor, mode: torch.Tensor, kappa: float | torch.Tensor, band: float,
                eps: torch.Tensor | None = None) -> torch.Tensor:
    """Per-answer negative log-likelihood of tuple answers under ``Φ̂``, ``(n,)``.

    ``d`` (n, k): each option's distance under ``Φ̂`` (closest / rank: reference to candidate; odd one out:
    the pair without that item). Scale-free logits ``ℓ = −κ·d / (2·mean d)`` — for ``k = 2`` the triplet's
    ``κρ`` margin. ``mode`` (n,) 0: a choice ``obs[:, 0]`` (the option index, or −1 for "no clear winner"),
    fitted by ``softmax(ℓ)``; 1: a ranking ``obs`` (n, k) (options closest first), fitted by Plackett–Luce,
    ``Σ_j ℓ_{π_j} − logsumexp(ℓ_{π_j…π_k})``. With ``eps`` (each answer's flip rate): a choice is the
    observed option with probability ``ε/(k−1) + (1 − εk/(k−1))·p`` (a flip picks another option at
    random; for ``k = 2`` the triplet's ``ε + (1−2ε)σ``), a ranking ``(1−ε)·PL + ε/k!`` (a flip is a
    random ranking), and "no clear winner" keeps the top two distances within the band
    (``softplus(κ(ρ − band))`` on their ``ρ = (d_(2) − d_(1))/(d_(1) + d_(2))``), scaled by ``1 − 2ε``.
    """
    n, k = d.shape
    kc = kappa[:, None] if torch.is_tensor(kappa) else kappa  # one κ per answer, or one for all
    logits = -kc * d / (2 * d.mean(dim=1, keepdim=True) + 1e-30)  # (n, k)
    choice = obs[:, 0].clamp(min=0)
    log_p = torch.log_softmax(logits, dim=1).gather(1, choice[:, None])[:, 0]  # (n,)
    lp = logits.gather(1, obs.clamp(min=0, max=k - 1))  # (n, k) in the ranking's order
    suffix = torch.logcumsumexp(lp.flip(1), dim=1).flip(1)  # logsumexp of lp[:, j:]
    log_pl = (lp - suffix).sum(dim=1)  # (n,)
    two = torch.sort(d, dim=1).values[:, :2]
    rho = (two[:, 1] - two[:, 0]) / (two[:, 0] + two[:, 1] + 1e-30)
    tie = F.softplus(kappa * (rho - band))
    if eps is not None:
        log_p = torch.logaddexp(torch.log(eps / (k - 1)), torch.log1p(-eps * k / (k - 1)) + log_p)
        log_pl = torch.logaddexp(torch.log(eps) - math.lgamma(k + 1), torch.log1p(-eps) + log_pl)
        tie = (1 - 2 * eps) * tie
    return torch.where(mode == 1, -log_pl, torch.where(obs[:, 0] < 0, tie, -log_p))
