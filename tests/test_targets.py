import numpy as np
import pytest

from fbloop import targets
from fbloop.errors import ConfigError, NonFiniteError, NonPSDError, ShapeError, TargetFileError
from fbloop.targets.load import load_target


@pytest.mark.parametrize("p, rank, d", [(10, 4, None), (40, 40, None), (32, 8, 16), (6, 1, 3)])
def test_synthetic_rank_and_spectrum(p, rank, d):
    t = targets.synthetic(targets.SyntheticConfig(p=p, rank=rank, d=d, seed=3))
    assert t.p == p and t.rank == rank
    phi = t.phi()
    np.testing.assert_allclose(phi, phi.T)
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(phi))[::-1], t.eigenvalues, atol=1e-9)
    np.testing.assert_allclose(np.diag(phi), 1.0)  # unit atoms
    q = t.eigenvectors()
    np.testing.assert_allclose(q.T @ q, np.eye(p), atol=1e-10)
    np.testing.assert_allclose(q[:, :rank] * t.eigenvalues[:rank] @ q[:, :rank].T, phi, atol=1e-9)


def test_coherence_and_norms():
    loose = targets.synthetic(targets.SyntheticConfig(p=200, rank=50, coherence=0.0)).phi()
    tight = targets.synthetic(targets.SyntheticConfig(p=200, rank=50, coherence=0.6)).phi()
    off = ~np.eye(200, dtype=bool)
    assert abs(loose[off].mean()) < 0.05 and tight[off].mean() > 0.4
    ln = targets.synthetic(targets.SyntheticConfig(p=50, rank=5, norms="lognormal")).phi()
    assert np.std(np.diag(ln)) > 0.1


@pytest.mark.parametrize("kwargs, match", [
    ({"p": 1}, "p ≥ 2"), ({"rank": 0}, "rank=0"), ({"p": 5, "rank": 6}, "rank=6"),
    ({"coherence": 1.0}, "coherence"), ({"norms": "big"}, "'big'"),
])
def test_synthetic_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        targets.SyntheticConfig(**kwargs)


def test_from_phi_checks():
    with pytest.raises(ShapeError, match=r"\(3, 4\)"):
        targets.from_phi(np.ones((3, 4)))
    with pytest.raises(NonFiniteError):
        targets.from_phi(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(NonPSDError, match="not symmetric"):
        targets.from_phi(np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(NonPSDError, match="smallest eigenvalue"):
        targets.from_phi(np.diag([1.0, -1.0, 1.0]))
    with pytest.raises(NonPSDError, match="zero matrix"):
        targets.from_phi(np.zeros((3, 3)))
    t = targets.from_phi(np.diag([3.0, 1.0, 0.0]))
    assert t.rank == 2 and t.eigenvalues[0] == pytest.approx(3.0)


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_file_round_trip(tmp_path, suffix):
    t = targets.synthetic(targets.SyntheticConfig(p=12, rank=3))
    path = tmp_path / f"dict{suffix}"
    targets.save_target(t, path)
    back = targets.load_target(f"dict:{path}")
    np.testing.assert_allclose(back.phi(), t.phi(), atol=1e-12)
    np.save(tmp_path / "phi.npy", t.phi())
    assert targets.load_target(f"phi:{tmp_path / 'phi.npy'}").rank == 3


def test_file_errors(tmp_path):
    with pytest.raises(TargetFileError, match="no such file"):
        targets.load_target(f"phi:{tmp_path / 'missing.npy'}")
    good = tmp_path / "good.npy"
    np.save(good, np.eye(5))
    bad = tmp_path / "truncated.npy"
    bad.write_bytes(good.read_bytes()[:-17])
    with pytest.raises(TargetFileError, match="truncated.npy: cannot read"):
        targets.load_target(f"phi:{bad}")
    other = tmp_path / "phi.txt"
    other.write_text("1 0\n0 1\n")
    with pytest.raises(TargetFileError, match="unknown file type"):
        targets.load_target(f"phi:{other}")


@pytest.mark.parametrize("spec, match", [
    ("nope", "Unknown target kind 'nope'"),
    ("synthetic:p=10,colour=red", "colour"),
    ("synthetic:p=ten", "p=ten"),
    ("synthetic:p", "not key=value"),
    ("phi:", "needs a file"),
    ("rfm:figure=3", "figure"),
])
def test_spec_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        targets.load_target(spec)


def test_paper_shaped_presets_take_synthetic_parameters():
    t = targets.load_target("chessgpt:p=100,rank=10,d=10,seed=3")
    assert (t.p, t.rank, t.factor.shape[1]) == (100, 10, 10)
    assert t.meta["preset"] == "chessgpt" and t.name.startswith("chessgpt(")
    assert targets.PRESETS == {"chessgpt": {"p": 4096, "rank": 512, "d": 512},
                               "pythia": {"p": 32768, "rank": 215, "d": 512}}
    with pytest.raises(ConfigError, match="Unknown synthetic target parameter"):
        targets.load_target("pythia:size=3")


@pytest.mark.slow
def test_paper_shapes():
    chess = targets.load_target("chessgpt")
    assert (chess.p, chess.rank) == (4096, 512)
    assert np.allclose(np.einsum("pk,pk->p", chess.factor, chess.factor), 1.0)  # unit-norm atoms
    pythia = targets.load_target("pythia")
    assert (pythia.p, pythia.rank, pythia.factor.shape[1]) == (32768, 215, 215)


def test_garbage_npy_is_refused_by_name(tmp_path):


    bad = tmp_path / "phi.npy"
    bad.write_bytes(b"not an array at all")
    for spec in (f"phi:{bad}", f"dict:{bad}"):
        with pytest.raises(TargetFileError, match=r"phi\.npy: not a \.npy file .*numpy\.save") as info:
            load_target(spec)
        assert "pickle" not in str(info.value)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(TargetFileError, match="object array, which fbloop never unpickles"):
        load_target(f"phi:{tmp_path / 'obj.npy'}")


def test_non_psd_file_is_named_once(tmp_path):


    np.save(tmp_path / "neg.npy", -np.eye(3))
    with pytest.raises(NonPSDError) as info:
        load_target(f"phi:{tmp_path / 'neg.npy'}")
    assert str(info.value).count("neg.npy") == 1


def test_saved_safetensors_respect_the_umask(tmp_path):
    import os
    import stat

    t = load_target("synthetic:p=5,rank=2")
    old = os.umask(0o022)
    try:
        targets.save_target(t, tmp_path / "d.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "d.safetensors").st_mode) == 0o644


@pytest.mark.parametrize("dtype", ["int8", "int32", "bool"])
def test_non_float_weights_are_refused(tmp_path, dtype):
    from safetensors.numpy import save_file

    save_file({"W_dec": np.ones((4, 6), dtype=dtype)}, str(tmp_path / "d.safetensors"))
    np.save(tmp_path / "d.npy", np.ones((4, 6), dtype=dtype))
    for name in ("d.safetensors", "d.npy"):
        with pytest.raises(TargetFileError, match=f"dtype {dtype}; expect floating-point"):
            load_target(f"dict:{tmp_path / name}")


def test_a_large_float32_dictionary_stays_float32_and_reads_as_float64(monkeypatch):
    """Above GRAM_SVD_ABOVE entries a float32 D is kept float32 (no float64 copy); every product takes
    it to float64 a block at a time, so Φ*'s spectrum, range and the eigen design match a float64 copy's."""
    import fbloop.targets.target as target_mod
    from fbloop.metrics import pcc_factored
    from fbloop.queries.catalogue import make_design
    from fbloop.queries.designs import DesignConfig

    rng = np.random.default_rng(3)
    D = (rng.standard_normal((6, 400)) * np.r_[np.ones(4), np.zeros(2)][:, None]).astype(np.float32)
    monkeypatch.setattr(target_mod, "GRAM_SVD_ABOVE", 100)
    small32 = target_mod.from_dictionary(D)
    as64 = target_mod.from_dictionary(D.astype(np.float64))
    assert small32.factor.dtype == np.float32 and as64.factor.dtype == np.float64
    assert small32.rank == as64.rank == 4
    np.testing.assert_allclose(small32._gram, as64._gram, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(small32.eigenvalues, as64.eigenvalues, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(small32.range_vectors(), as64.range_vectors(), atol=1e-10)
    assert small32.range_vectors().flags.f_contiguous
    d32, d64 = (make_design(DesignConfig(name="eigen"), t, 0) for t in (small32, as64))
    np.testing.assert_allclose(d32.design_factor(small32.factor), d64.design_factor(as64.factor), atol=1e-10)
    u = rng.standard_normal((400, 3))
    assert abs(d32.pcc(u, small32.factor) - pcc_factored(d64.native_factor(u), as64.factor)) < 1e-10
