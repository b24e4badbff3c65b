"""The on-disk cache: keys that follow their inputs, atomic writes, unreadable entries treated as missing."""

from __future__ import annotations

import numpy as np
import pytest

from fbloop import cache


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FBLOOP_CACHE_DIR", str(tmp_path / "c"))
    return tmp_path / "c"


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FBLOOP_CACHE_DIR", str(tmp_path / "a"))
    assert cache.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("FBLOOP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache.cache_dir() == tmp_path / "x" / "fbloop"


def test_keys_change_with_version_and_params():
    k = cache.key("rfm", "v1", {"seed": 0})
    assert k == cache.key("rfm", "v1", {"seed": 0})
    assert k != cache.key("rfm", "v2", {"seed": 0})
    assert k != cache.key("rfm", "v1", {"seed": 1})
    assert k.startswith("rfm-")


def test_keys_change_with_the_blas_threading(monkeypatch):
    """A fit computed with one BLAS thread rounds differently from one with two: separate entries."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    two = cache.key("rfm", "v1", {"a": 1})
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cache.key("rfm", "v1", {"a": 1}) != two
    assert cache.key("rfm", "v1", {"a": 1}) == cache.key("rfm", "v1", {"a": 1})


def test_source_version_follows_the_bytes(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("x = 1\n")
    v = cache.source_version(f)
    f.write_text("x = 2\n")
    assert cache.source_version(f) != v


def test_arrays_and_json_round_trip(cache_home):
    a = np.arange(6.0).reshape(2, 3)
    assert cache.load_arrays("e") is None
    cache.save_arrays("e", {"a": a})
    np.testing.assert_array_equal(cache.load_arrays("e")["a"], a)
    cache.save_json("j", {"x": 1.5})
    assert cache.load_json("j") == {"x": 1.5}
    assert not list(cache_home.glob(".*.tmp"))  # no temporary file left behind
    assert (cache_home / "e.npz").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04truncated"])
def test_an_unreadable_entry_is_missing(cache_home, content):
    cache_home.mkdir(parents=True)
    (cache_home / "e.npz").write_bytes(content)
    (cache_home / "j.json").write_bytes(content)
    assert cache.load_arrays("e") is None
    assert cache.load_json("j") is None
    cache.save_arrays("e", {"a": np.ones(2)})  # and is rewritten
    assert cache.load_arrays("e")["a"].shape == (2,)


def test_an_unwritable_cache_is_not_an_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FBLOOP_CACHE_DIR", str(blocker / "sub"))
    cache.save_arrays("e", {"a": np.ones(2)})  # silently skipped
    assert cache.load_arrays("e") is None
