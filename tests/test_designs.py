import numpy as np
import pytest

from fbloop import targets
from fbloop.errors import ConfigError
from fbloop.queries import catalogue, designs
from fbloop.queries.catalogue import make_design
from fbloop.queries.designs import DesignConfig


@pytest.fixture(scope="module")
def target():
    return targets.synthetic(targets.SyntheticConfig(p=12, rank=4, seed=1))


def test_counts_match_the_paper():
    assert catalogue.design_count("eigen", 4096, 512) == 134_912  # the paper's Fig. 3 count
    assert catalogue.design_count("constructive", 4096, 512) == 8_390_656
    assert catalogue.design_count("gaussian", 10, 10) == 54
    assert catalogue.design_count("sparse", 10, 4) is None
    assert catalogue.bound("gaussian", 10, 4)["full_rank_lower_bound"] == 54
    with pytest.raises(ConfigError, match="r=11"):
        catalogue.bound("eigen", 10, 11)


@pytest.mark.parametrize("name", ["eigen", "constructive"])
def test_constructive_designs_are_finite_and_complete(target, name):
    d = make_design(DesignConfig(name=name), target, 0)
    assert d.total == d.count
    q = d.queries(0, d.total)
    dense = q.a.to_dense()
    assert np.linalg.matrix_rank(dense) == target.p
    with pytest.raises(ConfigError, match="outside design"):
        d.queries(0, d.total + 1)


def test_constructive_enumerates_every_pair_once(target):
    d = make_design(DesignConfig(name="constructive"), target, 0)
    dense = d.queries(0, d.total).a.to_dense()
    supports = {tuple(np.flatnonzero(row)) for row in dense}
    expected = {(i,) for i in range(12)} | {(i, j) for i in range(12) for j in range(i + 1, 12)}
    assert supports == expected and len(dense) == len(expected)


def test_eigen_design_uses_the_range_and_null_space(target):
    d = make_design(DesignConfig(name="eigen"), target, 0)
    phi = target.phi()
    batch = d.queries(0, d.total).a
    assert batch.s == 2 and np.all(np.count_nonzero(batch.values, axis=1) <= 2)  # sparse in the eigenbasis
    u = d.to_native(batch).to_dense()
    q = np.einsum("np,pq,nq->n", u, phi, u)
    r = target.rank
    assert np.all(q[: r * (r + 1) // 2] > 1e-6) and np.allclose(q[r * (r + 1) // 2:], 0, atol=1e-9)
    # The oracle's view (Φ* in the basis) gives the same scales as feature coordinates.
    v = d.design_factor(target.factor)
    np.testing.assert_allclose(np.sum((batch.to_dense() @ v) ** 2, axis=1), q, atol=1e-9)
    np.testing.assert_allclose(d.native_factor(v) @ d.native_factor(v).T, phi, atol=1e-9)


@pytest.mark.parametrize("name", ["gaussian", "sparse", "triplet"])
def test_queries_do_not_depend_on_chunking(target, name):
    d = make_design(DesignConfig(name=name, mu=0.7), target, 5)
    whole = d.queries(4000, 4300)
    part = d.queries(4100, 4150)
    np.testing.assert_array_equal(part.a.to_dense(), whole.a.to_dense()[100:150])
    if name == "triplet":
        np.testing.assert_array_equal(part.c.to_dense(), whole.c.to_dense()[100:150])
    other_seed = make_design(DesignConfig(name=name, mu=0.7), target, 6).queries(4100, 4150)
    assert not np.array_equal(other_seed.a.to_dense(), part.a.to_dense())


@pytest.mark.parametrize("p, mu, s", [(10, 0.97, 10), (12, 0.5, 3), (5000, 0.999, 3), (50, 0.0, 2)])
def test_sparse_sampling_distribution(p, mu, s):
    rng = np.random.default_rng(0)
    idx, val = designs.sample_sparse(rng, 2000, p, mu, s)
    nnz = np.count_nonzero(val, axis=1)
    assert nnz.min() >= 1 and nnz.max() <= s
    assert np.all((val >= 0) & (val <= 1))
    for row_i, row_v in zip(idx[:200], val[:200]):
        live = row_i[row_v > 0]
        assert len(set(live)) == len(live)  # distinct coordinates
    if mu == 0.0:
        assert np.all(nnz == s)


def test_triplets_and_gaussian_triplets(target):
    d = make_design(DesignConfig(name="triplet", dist="gaussian"), target, 0)
    q = d.queries(0, 10)
    assert q.kind == "triplet" and q.a.s == 12 and q.b is not None


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "random"}, "Unknown design 'random'"), ({"mu": 1.0}, "mu=1.0"),
    ({"mu": -0.1}, "mu=-0.1"), ({"s": 0}, "s=0"), ({"dist": "cauchy"}, "cauchy"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DesignConfig(**kwargs)


def test_coverage_design_touches_every_coordinate_evenly():
    t = targets.synthetic(targets.SyntheticConfig(p=301, rank=4, seed=1))
    d = make_design(DesignConfig(name="coverage", s=3), t, seed=2)
    n = 100 * 5 + 37  # 5 whole rounds of ⌊301/3⌋ = 100 queries, and part of a sixth
    q = d.queries(0, n)
    assert q.a.indices.shape == (n, 3) and (q.a.values > 0).all() and (q.a.values <= 1).all()
    assert all(len(set(row)) == 3 for row in q.a.indices.tolist())
    touches = np.bincount(q.a.indices.ravel(), minlength=301)
    assert touches.max() - touches.min() <= 2  # random supports: a Poisson spread
    rand = make_design(DesignConfig(name="sparse", s=3), t, seed=2).queries(0, n)
    rt = np.bincount(rand.a.indices[rand.a.values > 0], minlength=301)
    assert rt.max() - rt.min() > 10
    whole = d.queries(0, 500)
    per_round = np.bincount(whole.a.indices.ravel(), minlength=301)
    assert per_round.sum() == 1500 and per_round.min() >= 3  # a round leaves p mod s = 1 coordinate out
    parts = [d.queries(a, b) for a, b in ((0, 7), (7, 250), (250, n))]
    assert np.array_equal(np.concatenate([x.a.indices for x in parts]), q.a.indices)
    assert np.array_equal(np.concatenate([x.a.values for x in parts]), q.a.values)


def test_eigen_basis_is_orthonormal_and_starts_with_the_range(target):
    from fbloop.queries.designs import EigenBasis

    q = target.range_vectors()
    basis = EigenBasis(q.copy(order="F"))  # it factorises its argument in place
    b = basis.dense()
    np.testing.assert_allclose(b.T @ b, np.eye(target.p), atol=1e-12)
    np.testing.assert_allclose(b[:, : q.shape[1]], q, atol=1e-12)  # the eigenvectors themselves, signs too
    x = np.random.default_rng(0).standard_normal((target.p, 3))
    np.testing.assert_allclose(basis.apply(x), b @ x, atol=1e-12)
    np.testing.assert_allclose(basis.apply_t(x), b.T @ x, atol=1e-12)


def test_eigen_design_never_forms_a_dense_basis(monkeypatch):
    """Above the dense limit the eigen design still works: the basis is thin (p·r), not p × p."""
    import fbloop.targets.target as targets_mod
    from fbloop.targets.target import from_dictionary

    monkeypatch.setattr(targets_mod, "DENSE_P_LIMIT", 50)
    rng = np.random.default_rng(1)
    t = from_dictionary(rng.standard_normal((6, 300)), name="wide")
    with pytest.raises(ConfigError, match=r"p = 300 .*p ≤ 50"):
        t.eigenvectors()
    with pytest.raises(ConfigError, match="dense p × p"):
        t.phi()
    d = make_design(DesignConfig(name="eigen"), t, 0)
    assert d.total == 6 * 7 // 2 + 300 - 6
    assert d.basis.y.shape == (300, 6)
    v = d.design_factor(t.factor)  # Φ* in the eigenbasis: diagonal on the first r coordinates
    np.testing.assert_allclose(v[6:], 0, atol=1e-9)
    np.testing.assert_allclose(np.sort(np.sum(v[:6] ** 2, axis=1))[::-1], t.eigenvalues[:6], rtol=1e-9)
    from fbloop.metrics import pcc_factored
    assert pcc_factored(d.native_factor(v), t.factor) > 1 - 1e-12


def test_large_factors_take_the_gram_svd(monkeypatch):
    import fbloop.targets.target as targets_mod
    from fbloop.targets.target import from_dictionary

    rng = np.random.default_rng(2)
    D = rng.standard_normal((8, 60)) * np.r_[np.ones(5), np.zeros(3)][:, None]  # rank 5
    exact = from_dictionary(D)
    monkeypatch.setattr(targets_mod, "GRAM_SVD_ABOVE", 10)
    gram = from_dictionary(D)
    assert gram.rank == exact.rank == 5
    np.testing.assert_allclose(gram.eigenvalues, exact.eigenvalues, rtol=1e-9, atol=1e-9)
    q = gram.range_vectors()
    np.testing.assert_allclose(q.T @ q, np.eye(5), atol=1e-10)
    np.testing.assert_allclose(np.abs(q.T @ exact.range_vectors()), np.eye(5), atol=1e-8)
