"""SAELens / dictionary_learning checkpoints and Neuronpedia descriptions as targets."""

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file, save_file

from fbloop.errors import ConfigError, NonFiniteError, ShapeError, TargetFileError
from fbloop.loop import RunConfig, run_loop
from fbloop.queries.designs import DesignConfig
from fbloop.store import Store
from fbloop.targets import checkpoints
from fbloop.targets.load import load_target

FIXTURES = Path(__file__).parent / "fixtures"
SAELENS = FIXTURES / "saelens_tiny"
DICTLEARN = FIXTURES / "dictlearn_tiny"
SAELENS_TEXTS = ("numbers in lists", "closing brackets", "", "the word 'the'", "", "", "", "French words",
                 "", "", "", "end of a sentence")


def saelens_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(SAELENS, tmp_path / "sae"))


def dictlearn_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(DICTLEARN, tmp_path / "ae"))


def rewrite_weights(folder: Path, change) -> None:
    tensors = load_file(folder / "sae_weights.safetensors")
    change(tensors)
    save_file(tensors, folder / "sae_weights.safetensors")


def rewrite_json(file: Path, change) -> None:
    doc = json.loads(file.read_text())
    change(doc)
    file.write_text(json.dumps(doc))


def rewrite_state(folder: Path, change) -> None:
    state = torch.load(folder / "ae.pt", weights_only=True)
    change(state)
    torch.save(state, folder / "ae.pt")


# ---------------------------------------------------------------- the fixtures


def test_saelens_fixture():
    t = checkpoints.load_saelens(SAELENS)
    W_dec = load_numpy(SAELENS / "sae_weights.safetensors")["W_dec"].astype(np.float64)  # (p, d): atom rows
    assert W_dec.shape == (12, 8) and t.p == 12 and t.rank == 8
    np.testing.assert_allclose(t.phi(), W_dec @ W_dec.T, atol=1e-12)  # Φ* = DᵀD with D = W_decᵀ
    assert t.descriptions == SAELENS_TEXTS  # first of two for feature 1; stripped; "" where none
    assert {k: t.meta[k] for k in ("format", "architecture", "d", "p", "model_name", "hook_name", "layer")} == {
        "format": "saelens", "architecture": "standard", "d": 8, "p": 12, "model_name": "pythia-70m-deduped",
        "hook_name": "blocks.3.hook_resid_post", "layer": 3}
    assert t.summary()["neuronpedia_id"] == "pythia-70m-deduped/3-res-tiny"


def test_dictlearn_fixture():
    t = checkpoints.load_dictionary_learning(DICTLEARN)
    dec = torch.load(DICTLEARN / "ae.pt", weights_only=True)["decoder.weight"].double().numpy()  # (d, p)
    assert dec.shape == (8, 12) and t.p == 12
    np.testing.assert_allclose(t.phi(), dec.T @ dec, atol=1e-12)  # decoder columns are atoms
    assert [i for i, text in enumerate(t.descriptions) if text] == [2, 5, 10]
    assert t.descriptions[5] == "years"
    assert {k: t.meta[k] for k in ("format", "dict_class", "d", "p", "model_name", "hook_name", "layer")} == {
        "format": "dictionary_learning", "dict_class": "AutoEncoder", "d": 8, "p": 12,
        "model_name": "EleutherAI/pythia-70m-deduped", "hook_name": "resid_post_layer_3", "layer": 3}


@pytest.mark.parametrize("spec, folder", [
    ("saelens:{}", SAELENS), ("saelens:{}/sae_weights.safetensors", SAELENS), ("saelens:{}/cfg.json", SAELENS),
    ("dictlearn:{}", DICTLEARN), ("dictlearn:{}/ae.pt", DICTLEARN),
])
def test_load_target_specs(spec, folder):
    t = load_target(spec.format(folder))
    load = checkpoints.load_saelens if spec.startswith("saelens") else checkpoints.load_dictionary_learning
    direct = load(folder)
    np.testing.assert_array_equal(t.phi(), direct.phi())
    assert t.descriptions == direct.descriptions


def test_spec_without_path():
    with pytest.raises(ConfigError, match="needs a directory"):
        load_target("saelens:")


@pytest.mark.parametrize("spec", [f"saelens:{SAELENS}", f"dictlearn:{DICTLEARN}"])
def test_loop_recovers_the_fixture(tmp_path, spec):
    cfg = RunConfig(target=spec, design=DesignConfig(name="constructive"), learner="exact")
    with Store(tmp_path / "x.db") as store:
        result = run_loop(cfg, store)
    assert result.answers == result.bound == 78 and result.pcc >= 0.9999


def test_loop_gradient_learner_on_the_fixture(tmp_path):
    cfg = RunConfig(target=f"saelens:{SAELENS}", design=DesignConfig(name="constructive"))
    with Store(tmp_path / "x.db") as store:
        assert run_loop(cfg, store).pcc >= 0.9999


# ---------------------------------------------------------------- save → load


def random_sae(rng, d_in=5, d_sae=7):
    W_dec = rng.standard_normal((d_sae, d_in)).astype(np.float32)
    return dict(W_enc=W_dec.T.copy(), b_enc=rng.standard_normal(d_sae), W_dec=W_dec, b_dec=np.zeros(d_in))


def test_save_saelens_round_trip(tmp_path):
    sae = random_sae(np.random.default_rng(3))
    texts = {0: "zero", 4: "  four ", 6: "six"}
    checkpoints.save_saelens(tmp_path / "sae", **sae, cfg={"model_name": "gpt2-small", "hook_layer": 6,
                             "meta": {"hook_name": "blocks.6.hook_resid_pre"}}, descriptions=texts)
    t = checkpoints.load_saelens(tmp_path / "sae")
    W = sae["W_dec"].astype(np.float64)
    np.testing.assert_allclose(t.phi(), W @ W.T, atol=1e-12)
    assert t.descriptions == ("zero", "", "", "", "four", "", "six")
    assert (t.meta["model_name"], t.meta["hook_name"], t.meta["layer"], t.meta["d"], t.meta["p"]) == (
        "gpt2-small", "blocks.6.hook_resid_pre", 6, 5, 7)
    # The layout SAELens reads: float32 tensors named as its state dict, v6 "metadata" and pre-6 top-level keys.
    stored = load_file(tmp_path / "sae" / "sae_weights.safetensors")
    assert set(stored) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    assert {v.dtype for v in stored.values()} == {torch.float32}
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and (cfg["d_in"], cfg["d_sae"]) == (5, 7)
    assert cfg["metadata"] == {"model_name": "gpt2-small", "hook_layer": 6, "hook_name": "blocks.6.hook_resid_pre",
                               "sae_lens_version": checkpoints.saelens.SAELENS_FORMAT_VERSION,
                               "sae_lens_training_version": None}
    assert "meta" not in cfg
    assert cfg["hook_name"] == "blocks.6.hook_resid_pre" and cfg["normalize_activations"] == "none"
    # Saving again without descriptions drops the stale explanations file.
    checkpoints.save_saelens(tmp_path / "sae", **sae, cfg={})
    assert not (tmp_path / "sae" / "explanations.jsonl").exists()
    assert checkpoints.load_saelens(tmp_path / "sae").descriptions is None


def test_save_saelens_jumprelu_from_torch(tmp_path):
    sae = random_sae(np.random.default_rng(4))
    sae = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in sae.items()}
    checkpoints.save_saelens(tmp_path / "j", **sae, cfg={"architecture": "jumprelu"},
                             extra={"threshold": torch.full((7,), 0.1)})
    t = checkpoints.load_saelens(tmp_path / "j" / "sae_weights.safetensors")
    assert t.meta["architecture"] == "jumprelu" and t.p == 7


@pytest.mark.parametrize("change, kwargs, error, match", [
    (lambda s: s.update(W_enc=np.zeros((5, 6))), {}, ShapeError, r"W_enc of shape \(d_in, d_sae\) = \(5, 7\)"),
    (lambda s: s.update(b_dec=np.zeros(4)), {}, ShapeError, "b_dec"),
    (lambda s: s["W_dec"].__setitem__((0, 0), np.nan), {}, NonFiniteError, "'W_dec' holds 1"),
    (lambda s: None, {"cfg": {"d_in": 6}}, ShapeError, "d_in=6"),
    (lambda s: None, {"cfg": {"architecture": "jumprelu"}}, ShapeError, "threshold"),
    (lambda s: None, {"cfg": {"architecture": "gated"}}, ConfigError, "gated"),
    (lambda s: None, {"cfg": {"architecture": "nope"}}, ConfigError, "nope"),
    (lambda s: None, {"cfg": {"meta": {"color": "red"}}}, ConfigError, "metadata fields"),
    (lambda s: None, {"descriptions": {7: "past the end"}}, ShapeError, "0…6"),
])
def test_save_saelens_rejects(tmp_path, change, kwargs, error, match):
    sae = random_sae(np.random.default_rng(5))
    change(sae)
    with pytest.raises(error, match=match):
        checkpoints.save_saelens(tmp_path / "bad", **sae, **{"cfg": {}, **kwargs})
    assert not (tmp_path / "bad").exists()  # nothing written


# ---------------------------------------------------------------- other layouts


def test_saelens_pre_6_config_and_gated(tmp_path):
    folder = saelens_copy(tmp_path)
    old = {"d_in": 8, "d_sae": 12, "model_name": "gpt2-small", "hook_point": "blocks.3.hook_resid_pre",
           "hook_point_layer": 3, "dtype": "float32"}  # SAELens < 6: no architecture, no meta
    (folder / "cfg.json").write_text(json.dumps(old))
    t = checkpoints.load_saelens(folder)
    assert (t.meta["architecture"], t.meta["model_name"], t.meta["hook_name"], t.meta["layer"]) == (
        "standard", "gpt2-small", "blocks.3.hook_resid_pre", 3)
    rewrite_json(folder / "cfg.json", lambda c: c.update(architecture="gated"))
    gated = {k: torch.zeros(12) for k in ("b_gate", "b_mag", "r_mag")}  # and no b_enc
    rewrite_weights(folder, lambda w: (w.pop("b_enc"), w.update(gated)))
    np.testing.assert_allclose(checkpoints.load_saelens(folder).phi(), t.phi())


def test_saelens_bfloat16_weights(tmp_path):
    folder = saelens_copy(tmp_path)
    rewrite_weights(folder, lambda w: w.update({k: v.to(torch.bfloat16) for k, v in w.items()}))
    rewrite_json(folder / "cfg.json", lambda c: c.update(dtype="bfloat16"))
    W = load_file(folder / "sae_weights.safetensors")["W_dec"].double().numpy()
    np.testing.assert_allclose(checkpoints.load_saelens(folder).phi(), W @ W.T, atol=1e-12)

def linear_decoder(rng, d, p):
    return torch.from_numpy(rng.standard_normal((d, p)).astype(np.float32))  # (activation_dim, dict_size)


@pytest.mark.parametrize("dict_class", ["AutoEncoder", "AutoEncoderNew", "GatedAutoEncoder", "AutoEncoderTopK",
                                        "BatchTopKSAE", "JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE"])
@pytest.mark.parametrize("with_config", [True, False])
def test_dictlearn_classes(tmp_path, dict_class, with_config):
    d, p = 6, 9
    dec = linear_decoder(np.random.default_rng(6), d, p)  # the dictionary D, atoms as columns
    F, D = torch.zeros(p), torch.zeros(d)
    linear = {"encoder.weight": dec.T.clone(), "decoder.weight": dec}
    state = {
        "AutoEncoder": {**linear, "encoder.bias": F, "bias": D},
        "AutoEncoderNew": {**linear, "encoder.bias": F, "decoder.bias": D},
        "GatedAutoEncoder": {**linear, "decoder_bias": D, "r_mag": F, "gate_bias": F, "mag_bias": F},
        "AutoEncoderTopK": {**linear, "encoder.bias": F, "b_dec": D, "k": torch.tensor(3, dtype=torch.int),
                            "threshold": torch.tensor(-1.0)},
        "BatchTopKSAE": {**linear, "encoder.bias": F, "b_dec": D, "k": torch.tensor(3, dtype=torch.int),
                         "threshold": torch.tensor(0.2)},
        "JumpReluAutoEncoder": {"W_enc": dec.clone(), "b_enc": F, "W_dec": dec.T.clone(), "b_dec": D,
                                "threshold": F},
        "MatryoshkaBatchTopKSAE": {"W_enc": dec.clone(), "b_enc": F, "W_dec": dec.T.clone(), "b_dec": D,
                                   "k": torch.tensor(3, dtype=torch.int), "threshold": torch.tensor(0.1),
                                   "group_sizes": torch.tensor([3, 6])},
    }[dict_class]
    folder = tmp_path / "ae"
    folder.mkdir()
    if dict_class == "AutoEncoder":  # as a torch.compile'd module names them
        state = {f"_orig_mod.{k}": v for k, v in state.items()}
    torch.save(state, folder / "ae.pt")
    if with_config:
        (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": dict_class, "activation_dim": d,
                                                                    "dict_size": p, "k": 3, "layer": 1}}))
    t = checkpoints.load_dictionary_learning(folder)
    expect = dec.double().numpy()
    if dict_class == "AutoEncoder":  # load_dictionary's AutoEncoder.from_pretrained normalises the columns
        expect = expect / np.linalg.norm(expect, axis=0)
    np.testing.assert_allclose(t.phi(), expect.T @ expect, atol=1e-12)
    assert (t.p, t.meta["d"]) == (p, d)
    if with_config or dict_class != "BatchTopKSAE":  # BatchTopKSAE's tensors read as AutoEncoderTopK
        assert t.meta["dict_class"] == dict_class


# ---------------------------------------------------------------- descriptions


ITEM = {"modelId": "m", "layer": "0-res", "explanationModelName": "x", "typeName": "y"}


@pytest.mark.parametrize("name, content", [
    ("e.json", json.dumps({"explanations": [{**ITEM, "index": "2", "description": "two"},
                                            {**ITEM, "index": 0, "description": "zero"}]})),
    ("e.json", json.dumps([{"index": 2, "description": "two"}, {"index": 0, "description": "zero"}])),
    ("e.json", '{"index": "2", "description": "two"}\n{"index": "0", "description": "zero"}\n'),
    ("e.jsonl", '{"index": "2", "description": "two"}\n\n{"index": 0, "description": "zero"}\n'
                '{"index": 0, "description": "later"}\n{"index": 1, "description": ""}\n'
                '{"index": 1, "description": null}\n'),
])
def test_load_descriptions_formats(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    assert checkpoints.load_descriptions(tmp_path / name, 3) == ("zero", "", "two")


def test_load_descriptions_gzip_and_explicit_override(tmp_path):
    same_sae = {**ITEM, "modelId": "pythia-70m-deduped", "layer": "3-res-tiny"}  # the fixture's neuronpedia_id
    rows = [{**same_sae, "index": str(i), "description": f"f{i}"} for i in (11, 4)]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "batch-0.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    t = checkpoints.load_saelens(SAELENS, descriptions=tmp_path / "batch-0.jsonl.gz")
    assert [(i, s) for i, s in enumerate(t.descriptions) if s] == [(4, "f4"), (11, "f11")]
    # Another SAE's explanations are refused, unless forced.
    other = [{**ITEM, "index": "4", "description": "f4"}]
    (tmp_path / "other.jsonl").write_text(json.dumps(other[0]) + "\n")
    with pytest.raises(TargetFileError, match=r"explanations are for 'm/0-res'.*'pythia-70m-deduped/3-res-tiny'"):
        checkpoints.load_saelens(SAELENS, descriptions=tmp_path / "other.jsonl")
    forced = checkpoints.load_saelens(SAELENS, descriptions=tmp_path / "other.jsonl", force_descriptions=True)
    assert forced.descriptions[4] == "f4"


@pytest.mark.parametrize("name, content, match", [
    ("e.jsonl", '{"index": 0, "description": "a"}\n{"index": 1, "description": "b"}\n{"index": 2, "descr\n',
     "line 3: malformed JSON"),
    ("e.json", '[\n{"index": 0, "description": "a"},,\n]', "malformed JSON at line 2"),
    ("e.json", json.dumps([{"index": "12", "description": "x"}]),
     r"item \[0\]: feature index 12 is out of range for p=12"),
    ("e.jsonl", '{"index": 3, "description": "x"}\n{"index": -1, "description": "y"}\n',
     "line 2: feature index -1"),
    ("e.jsonl", '{"index": 3}\n', "line 1: missing key 'description'; the item has keys \\['index'\\]"),
    ("e.json", json.dumps([{"index": "three", "description": "x"}]), "index must be an integer"),
    ("e.json", json.dumps([{"index": 1, "description": 5}]), "description must be a string"),
    ("e.json", json.dumps({"features": []}), "expect a list of explanations"),
    ("e.jsonl", "[1, 2]\n", "line 1: expect an object"),
    ("e.json.gz", "not gzip", "cannot read"),
])
def test_bad_descriptions(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(TargetFileError, match=match) as info:
        checkpoints.load_descriptions(tmp_path / name, 12)
    assert str(tmp_path / name) in str(info.value)


def test_bad_descriptions_in_a_checkpoint_dir(tmp_path):
    folder = saelens_copy(tmp_path)
    with open(folder / "explanations.jsonl", "a") as f:
        f.write('{"index": 99, "description": "beyond p"}\n')
    with pytest.raises(TargetFileError, match=r"explanations.jsonl: line 7: feature index 99 is out of range"):
        load_target(f"saelens:{folder}")
    with pytest.raises(TargetFileError, match="no such explanations file"):
        checkpoints.load_saelens(SAELENS, descriptions=tmp_path / "missing.json")


# ---------------------------------------------------------------- bad checkpoints


def nan_at(key, n):
    def change(w):
        w[key].view(-1)[:n] = float("nan")
    return change


def cfg_set(**kw):
    return lambda f: rewrite_json(f / "cfg.json", lambda c: c.update(kw))


def trainer_set(**kw):
    return lambda f: rewrite_json(f / "config.json", lambda c: c["trainer"].update(kw))


def weights_set(**kw):
    return lambda f: rewrite_weights(f, lambda w: w.update(kw))


def truncate(name, keep):
    return lambda f: (f / name).write_bytes((f / name).read_bytes()[:keep])


ST = "sae_weights.safetensors"
SAELENS_BAD = {  # case: (change the copied fixture, the file the message names, what it says)
    "cfg missing d_sae": (lambda f: rewrite_json(f / "cfg.json", lambda c: c.pop("d_sae")),
                          "cfg.json", r"missing key 'd_sae'; the file has keys \['apply_b_dec_to_input'"),
    "cfg malformed": (lambda f: (f / "cfg.json").write_text('{"d_in": 8,\n "d_sae": }'),
                      "cfg.json", "malformed JSON at line 2"),
    "cfg missing": (lambda f: (f / "cfg.json").unlink(), "cfg.json", "no such file"),
    "no weights": (lambda f: (f / ST).unlink(), "sae", r"missing sae_weights.safetensors"),
    "no W_dec": (lambda f: rewrite_weights(f, lambda w: w.pop("W_dec")), ST,
                 r"missing tensor 'W_dec'; the file holds \['W_enc', 'b_dec', 'b_enc'\]"),
    "no b_enc": (lambda f: rewrite_weights(f, lambda w: w.pop("b_enc")), ST,
                 "missing tensor 'b_enc' \\(architecture 'standard' stores"),
    "W_dec vs cfg": (cfg_set(d_in=9), ST, r"W_dec has shape \(12, 8\), but cfg.json says d_sae=12, d_in=9"),
    "W_dec transposed": (lambda f: rewrite_weights(f, lambda w: w.update(W_dec=w["W_dec"].T.contiguous())),
                         ST, r"W_dec has shape \(8, 12\)"),
    "encoder vs decoder": (weights_set(W_enc=torch.zeros(8, 11)), ST,
                           r"tensor 'W_enc' has shape \(8, 11\); expect \(d_in, d_sae\) = \(8, 12\)"),
    "NaN W_dec": (lambda f: rewrite_weights(f, nan_at("W_dec", 3)), ST,
                  "tensor 'W_dec' holds 3 NaN/Inf value\\(s\\) of 96"),
    "Inf W_enc": (lambda f: rewrite_weights(f, lambda w: w["W_enc"].__setitem__((0, 0), float("inf"))),
                  ST, "tensor 'W_enc' holds 1 NaN/Inf"),
    "unknown architecture": (cfg_set(architecture="temporal"), "cfg.json",
                             r"architecture 'temporal' is not supported .*expect one of \['standard'"),
    "jumprelu without threshold": (cfg_set(architecture="jumprelu"), ST, "missing tensor 'threshold'"),
    "truncated": (truncate(ST, -40), ST, "cannot read safetensors .*truncated"),
    "zero decoder": (weights_set(W_dec=torch.zeros(12, 8)), ST, "zero matrix"),
}


def test_missing_directory(tmp_path):
    for spec in ("saelens", "dictlearn"):
        with pytest.raises(TargetFileError, match=f"{tmp_path / 'nope'}: no such .* directory"):
            load_target(f"{spec}:{tmp_path / 'nope'}")


def one_feature(f):
    (f / "config.json").unlink()
    (f / "explanations.json").unlink()
    torch.save({"decoder.weight": torch.ones(8, 1), "encoder.weight": torch.ones(1, 8),
                "encoder.bias": torch.zeros(1), "bias": torch.zeros(8)}, f / "ae.pt")


def unknown_layout(f):
    (f / "config.json").unlink()
    torch.save({"w": torch.zeros(2, 2)}, f / "ae.pt")


DICTLEARN_BAD = {
    "no ae.pt": (lambda f: (f / "ae.pt").unlink(), "ae", r"missing ae.pt; expect a dictionary_learning directory"),
    "truncated": (truncate("ae.pt", 1000), "ae.pt", "cannot read a torch state dict .*truncated"),
    "pickled object": (lambda f: torch.save({"decoder": torch.nn.Linear(2, 2)}, f / "ae.pt"), "ae.pt",
                       "pickles objects other than tensors"),
    "not a dict": (lambda f: torch.save(torch.zeros(3), f / "ae.pt"), "ae.pt", "expect a state dict .* got Tensor"),
    "unknown dict_class": (trainer_set(dict_class="CrossCoder"), "config.json",
                           r"unknown dict_class 'CrossCoder'; expect one of \['AutoEncoder'"),
    "unknown layout": (unknown_layout, "ae.pt", r"unknown layout: expect .*'decoder.weight'.*got keys \['w'\]"),
    "missing decoder": (lambda f: rewrite_state(f, lambda s: s.pop("decoder.weight")), "ae.pt",
                        r"missing tensor 'decoder.weight' \(AutoEncoder\); the file holds \['bias', "),
    "missing bias": (lambda f: rewrite_state(f, lambda s: s.pop("bias")), "ae.pt", "missing tensor 'bias'"),
    "decoder vs config": (trainer_set(activation_dim=9), "ae.pt",
                          r"decoder.weight has shape \(8, 12\), but config.json says activation_dim=9, "
                          r"dict_size=12: expect \(activation_dim, dict_size\) = \(9, 12\)"),
    "encoder vs decoder": (lambda f: rewrite_state(f, lambda s: s.update({"encoder.weight": torch.zeros(12, 7)})),
                           "ae.pt", r"'encoder.weight' has shape \(12, 7\); "
                                    r"expect \(dict_size, activation_dim\) = \(12, 8\)"),
    "NaN decoder": (lambda f: rewrite_state(f, nan_at("decoder.weight", 2)), "ae.pt",
                    "tensor 'decoder.weight' holds 2 NaN/Inf"),
    "config malformed": (lambda f: (f / "config.json").write_text("{\n\n  trainer: 1}"), "config.json",
                         "malformed JSON at line 3"),
    "one feature": (one_feature, "ae.pt", "the dictionary has 1 feature; a target needs p ≥ 2"),
}


BAD_CHECKPOINTS = [("saelens", saelens_copy, case, SAELENS_BAD[case]) for case in SAELENS_BAD] + [
    ("dictlearn", dictlearn_copy, case, DICTLEARN_BAD[case]) for case in DICTLEARN_BAD]


@pytest.mark.parametrize("kind, copy, case, bad", BAD_CHECKPOINTS, ids=[f"{k}-{c}" for k, _, c, _ in BAD_CHECKPOINTS])
def test_bad_checkpoint(tmp_path, kind, copy, case, bad):
    """A broken checkpoint of either format: one error naming the folder, the file and what is wrong."""
    change, file, match = bad
    folder = copy(tmp_path)
    change(folder)
    with pytest.raises(TargetFileError, match=match) as info:
        load_target(f"{kind}:{folder}")
    assert str(folder) in str(info.value) and file in str(info.value)


def test_int8_decoder_is_refused(tmp_path):
    folder = saelens_copy(tmp_path)
    rewrite_weights(folder, lambda w: w.update(W_dec=torch.ones(12, 8, dtype=torch.int8)))
    with pytest.raises(TargetFileError, match="'W_dec' has dtype int8; expect floating-point"):
        checkpoints.load_saelens(folder)
