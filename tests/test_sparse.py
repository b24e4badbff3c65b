import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fbloop.errors import NonFiniteError, ShapeError
from fbloop.sparse import SparseBatch, difference, project, quad_form


def random_batch(rng, n=5, p=12, s=3):
    idx = np.stack([rng.choice(p, s, replace=False) for _ in range(n)])
    return SparseBatch(idx, rng.standard_normal((n, s)), p)


def test_dense_round_trip():
    rng = np.random.default_rng(0)
    b = random_batch(rng)
    again = SparseBatch.from_dense(b.to_dense())
    np.testing.assert_allclose(again.to_dense(), b.to_dense())


@given(st.integers(0, 10_000))
@settings(max_examples=30, deadline=None)
def test_quad_form_matches_dense(seed):
    rng = np.random.default_rng(seed)
    b = random_batch(rng)
    v = rng.standard_normal((12, 4))
    dense = b.to_dense()
    np.testing.assert_allclose(quad_form(b, v), np.einsum("np,pq,nq->n", dense, v @ v.T, dense), rtol=1e-10)
    np.testing.assert_allclose(project(b, v), dense @ v, rtol=1e-10, atol=1e-12)


def test_difference_and_concat():
    rng = np.random.default_rng(1)
    a, b = random_batch(rng), random_batch(rng, s=2)
    np.testing.assert_allclose(difference(a, b).to_dense(), a.to_dense() - b.to_dense())
    both = SparseBatch.concat([a, b])
    assert both.s == 3 and len(both) == 10
    np.testing.assert_allclose(both.to_dense(), np.vstack([a.to_dense(), b.to_dense()]))


@pytest.mark.parametrize(
    "indices, values, p, error, match",
    [
        (np.zeros((2, 3), int), np.zeros((2, 2)), 5, ShapeError, r"same shape"),
        (np.zeros(3, int), np.zeros(3), 5, ShapeError, r"\(n, s\)"),
        (np.array([[0, 5]]), np.ones((1, 2)), 5, ShapeError, r"\[0, 5\)"),
        (np.array([[0, 1]]), np.array([[1.0, np.nan]]), 5, NonFiniteError, "NaN"),
        (np.array([[0.0, 1.0]]), np.ones((1, 2)), 5, ShapeError, "integer"),
    ],
)
def test_bad_batches(indices, values, p, error, match):
    with pytest.raises(error, match=match):
        SparseBatch(indices, values, p)
