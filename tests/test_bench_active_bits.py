"""The bits diagnostic: the Gaussian BALD it scores candidates by, and how it turns gains into answers."""

import numpy as np
import pytest

from fbloop.queries.active import NoiseModel, binary_entropy

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_active_bits")


def monte_carlo_bald(mu: float, var: float, noise: NoiseModel, n: int = 400_000) -> float:
    """``H[E P] − E H[P]`` with ``ρ ~ N(mu, var)`` drawn, the answer law as the oracle's."""
    rho = np.random.default_rng(0).normal(mu, np.sqrt(var), n)
    if noise.kind == "flip":
        prob = np.where(rho > 0, 1 - noise.flip, noise.flip)
    else:
        prob = 1 / (1 + np.exp(-rho / noise.temperature))
    return float(binary_entropy(np.array([prob.mean()]))[0] - binary_entropy(prob).mean())


@pytest.mark.parametrize("mu,var", [(0.0, 0.01), (0.1, 0.01), (0.3, 0.04), (0.05, 0.0025)])
def test_flip_bald_is_exact(bench, mu, var):
    noise = NoiseModel(kind="flip", flip=0.1)
    got = bench.gaussian_bald(np.array([mu]), np.array([var]), noise)[0]
    assert got == pytest.approx(monte_carlo_bald(mu, var, noise), abs=3e-3)


@pytest.mark.parametrize("temperature", [0.05, 0.2])
@pytest.mark.parametrize("mu,var", [(0.0, 0.01), (0.1, 0.01), (0.2, 0.04), (0.0, 0.0004)])
def test_logistic_bald_matches_the_integral(bench, temperature, mu, var):
    noise = NoiseModel(kind="logistic", temperature=temperature)
    got = bench.gaussian_bald(np.array([mu]), np.array([var]), noise)[0]
    assert got == pytest.approx(monte_carlo_bald(mu, var, noise), abs=3e-3)


def test_a_sure_posterior_learns_nothing_and_a_wider_one_more(bench):
    for noise in (NoiseModel(kind="flip", flip=0.1), NoiseModel(kind="logistic", temperature=0.05)):
        bits = bench.gaussian_bald(np.array([0.2, 0.05, 0.05, 0.5]), np.array([1e-14, 0.01, 0.1, 0.01]), noise)
        assert bits[0] == pytest.approx(0.0, abs=1e-3)
        # near the boundary a wider posterior has more to learn; far from it, little
        assert 0 < bits[1] < bits[2] <= 1.0 and bits[3] < bits[1]


def test_gains_pick_each_pools_best(bench):
    rng = np.random.default_rng(1)
    n = 10 * bench.POOL
    rho_true = rng.normal(0, 0.3, n)
    rho_hat = rho_true + rng.normal(0, 0.1, n)
    out = bench.gains(rho_hat, rho_true, np.full(n, 0.5), NoiseModel(kind="flip", flip=0.1))
    assert set(out) == set(bench.COLUMNS)
    for post in out.values():
        assert post["best_bits"] >= post["random_bits"] > 0 and post["gain"] >= 1.0
    assert out["one-bit"]["gain"] == pytest.approx(1 / max(out[p]["random_bits"] for p in bench.POSTERIORS))
    assert max(p["best_bits"] for p in out.values()) <= 1.0  # no answer tells more than a bit
    # a uniform spread scaled to the measured error is the measured posterior
    assert out["ensemble"] == pytest.approx(out["measured"])


def test_integrated_gain_exchanges_bits_for_answers_up_to_the_crossing(bench):
    def rounds(gain: float) -> list[dict]:
        return [{"answers": n, "posteriors": {p: {"gain": gain} for p in bench.COLUMNS}}
                for n in (100, 200, 400, 800)]

    # random crosses PCC 0.9 at 600: 100 shared answers, then 500 at gain 2 → 100 + 250 adaptive answers
    assert bench.integrated(rounds(2.0), 600.0, "measured") == pytest.approx(600 / 350)
    assert bench.integrated(rounds(1.0), 600.0, "true-error") == pytest.approx(1.0)
    assert bench.integrated(rounds(2.0), None, "measured") is None
