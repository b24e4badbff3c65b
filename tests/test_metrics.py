import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fbloop.errors import ShapeError
from fbloop.metrics import pcc, pcc_factored, relative_error, triplet_agreement


@given(st.integers(0, 10_000), st.floats(1e-3, 1e3))
@settings(max_examples=40, deadline=None)
def test_pcc_is_scale_free_and_factored_agrees(seed, scale):
    rng = np.random.default_rng(seed)
    u, v = rng.standard_normal((9, 3)), rng.standard_normal((9, 4))
    a, b = u @ u.T, v @ v.T
    assert pcc(scale * a, b) == pytest.approx(pcc(a, b), abs=1e-10)
    assert pcc_factored(np.sqrt(scale) * u, v) == pytest.approx(pcc(a, b), abs=1e-10)
    assert pcc(a, a) == pytest.approx(1.0)
    assert relative_error(scale * b, b) == pytest.approx(0.0, abs=1e-10)


def test_pcc_of_unrelated_matrices_is_low():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 50, 50))
    assert abs(pcc(a, b)) < 0.1


def test_shape_errors():
    with pytest.raises(ShapeError, match=r"\(3, 3\) and \(4, 4\)"):
        pcc(np.eye(3), np.eye(4))
    with pytest.raises(ShapeError):
        pcc_factored(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(ShapeError):
        triplet_agreement(np.ones(3), np.ones(4))


def test_triplet_agreement():
    assert triplet_agreement(np.array([1, -1, 0, 1]), np.array([1, 1, 0, 1])) == 0.75


def test_pcc_factored_by_blocks_and_in_a_basis(monkeypatch):
    """The blocked sums equal the whole-factor ones; with ``ones = Bᵀ1`` factors in an orthonormal
    basis give the PCC of the matrices back in feature coordinates; a float32 factor is read as float64."""
    from fbloop import metrics

    rng = np.random.default_rng(0)
    u, v = rng.standard_normal((500, 4)), rng.standard_normal((500, 3))
    whole = metrics.pcc_factored(u, v)
    monkeypatch.setattr(metrics, "BLOCK", 64)
    assert abs(metrics.pcc_factored(u, v) - whole) < 1e-13
    assert abs(metrics.pcc_factored(u.astype(np.float32), v) - metrics.pcc_factored(u.astype(np.float32)
                                                                                  .astype(np.float64), v)) < 1e-13
    q, _ = np.linalg.qr(rng.standard_normal((500, 500)))
    in_basis = metrics.pcc_factored(q.T @ u, q.T @ v, ones=q.T @ np.ones(500))
    assert abs(in_basis - whole) < 1e-12
    with pytest.raises(ShapeError):
        metrics.pcc_factored(u, v, ones=np.ones(3))
