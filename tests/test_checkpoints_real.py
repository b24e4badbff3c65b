"""Checkpoints written by the real packages (sae-lens, dictionary-learning; sparsify and Gemma Scope
layouts), against the atoms each package's own loader decodes (tests/fixtures/real, built by
scripts/make_real_checkpoints.sh; each folder's expect.json says which loader)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fbloop.metrics import pcc_factored
from fbloop.targets.load import load_target

REAL = Path(__file__).parent / "fixtures" / "real"
ROOT = Path(__file__).parent.parent
KIND = {"saelens": "saelens", "dictlearn": "dictlearn", "sparsify": "sparsify", "gemmascope": "gemmascope"}


def checkpoints(root: Path = REAL) -> list[Path]:
    return sorted(p.parent for p in root.rglob("expect.json"))


def spec_for(folder: Path, root: Path = REAL) -> str:
    return f"{KIND[folder.relative_to(root).parts[0]]}:{folder}"


def pcc_with_decoded(folder: Path, atoms: np.ndarray, root: Path = REAL) -> float:
    t = load_target(spec_for(folder, root))
    assert t.p == atoms.shape[0]
    return pcc_factored(t.factor, atoms.astype(np.float64))


@pytest.mark.parametrize("folder", checkpoints(), ids=lambda p: str(p.relative_to(REAL)))
def test_phi_matches_the_atoms_the_package_decodes(folder):
    expect = json.loads((folder / "expect.json").read_text())
    atoms = np.load(folder / "decoded_atoms.npy")  # (d_sae, d_out)
    assert pcc_with_decoded(folder, atoms) >= 0.9999, expect
    t = load_target(spec_for(folder))
    np.testing.assert_allclose(t.phi(), atoms @ atoms.T, rtol=1e-4, atol=1e-5 * np.abs(atoms @ atoms.T).max())
    assert t.meta["decoder_convention"]
    kind = folder.relative_to(REAL).parts[0]
    if kind == "saelens":
        assert t.meta["model_name"] == "pythia-70m-deduped" and t.meta["hook_name"].startswith("blocks.")
        assert t.meta["layer"] == int(t.meta["hook_name"].split(".")[1])
        assert t.meta["neuronpedia_id"].startswith("pythia-70m-deduped/")
    if kind == "dictlearn":
        assert (t.meta["model_name"], t.meta["layer"]) == ("pythia-70m-deduped", 3)
    if kind == "sparsify":
        assert (t.meta["model_name"], t.meta["layer"], t.meta["hook_name"]) == ("pythia-70m-deduped", 5, "layers.5")
    if kind == "gemmascope":
        assert (t.meta["layer"], t.meta["architecture"]) == (3, "jumprelu")


@pytest.mark.parametrize("ckpt", sorted(REAL.rglob("checkpoints/ae_*.pt")), ids=lambda p: str(p.relative_to(REAL)))
def test_dictlearn_intermediate_checkpoints(ckpt):
    atoms = np.load(ckpt.with_name(f"{ckpt.stem}.decoded_atoms.npy"))
    t = load_target(f"dictlearn:{ckpt}")
    assert t.meta["checkpoint"] == ckpt.name
    assert pcc_factored(t.factor, atoms) >= 0.9999


def test_conventions_are_named():
    rescaled = load_target(f"saelens:{REAL / 'saelens' / 'training_batchtopk'}")
    assert "rescale_acts_by_decoder_norm" in rescaled.meta["decoder_convention"]
    whitened = load_target(f"saelens:{REAL / 'saelens' / 'training_topk_whitened'}")
    assert "unwhitened" in whitened.meta["decoder_convention"] and "scaling_factor" in whitened.meta["decoder_convention"]
    plain = load_target(f"saelens:{REAL / 'saelens' / 'standard'}")
    assert plain.meta["decoder_convention"] == "W_dec rows as stored"
    ae = load_target(f"dictlearn:{REAL / 'dictlearn' / 'standard_april' / 'trainer_0'}")
    assert "normalize_decoder" in ae.meta["decoder_convention"]
    # save_model and save_inference_model of the same BatchTopK SAE now give the same Φ*.
    inference = load_target(f"saelens:{REAL / 'saelens' / 'inference_batchtopk'}")
    assert pcc_factored(rescaled.factor, inference.factor) >= 0.9999


def test_whitened_checkpoint_without_its_whitening_file_is_refused(tmp_path):
    from fbloop.errors import TargetFileError

    folder = Path(shutil.copytree(REAL / "saelens" / "training_topk_whitened", tmp_path / "w"))
    (folder / "activation_whitening.safetensors").unlink()
    with pytest.raises(TargetFileError, match="covariance_whitening.*activation_whitening.safetensors is not beside"):
        load_target(f"saelens:{folder}")


@pytest.mark.slow
def test_the_fixture_script_reproduces_the_fixtures(tmp_path):
    """Rebuild every fixture with the real packages (their venvs: scripts/make_real_checkpoints.sh) and
    check that fbloop matches the new decodes too. Skipped where the venvs are absent."""
    venvs = {name: ROOT / f".venv-{name}" / "bin" / "python" for name in ("saelens", "dictlearn")}
    missing = [str(v) for v in venvs.values() if not v.exists()]
    if missing:
        pytest.skip(f"package venvs absent ({missing}); run scripts/make_real_checkpoints.sh first")
    for part, python in venvs.items():
        subprocess.run([str(python), str(ROOT / "scripts" / "make_real_checkpoints.py"), part, str(tmp_path)],
                       check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    fresh = checkpoints(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in fresh) == sorted(str(p.relative_to(REAL))
                                                                      for p in checkpoints())
    for folder in fresh:
        atoms = np.load(folder / "decoded_atoms.npy")
        assert pcc_with_decoded(folder, atoms, tmp_path) >= 0.9999, folder
        if "dictlearn" not in folder.parts:  # trained ones vary with the machine's float order
            np.testing.assert_allclose(atoms, np.load(REAL / folder.relative_to(tmp_path) / "decoded_atoms.npy"),
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_saelens_loads_what_save_saelens_and_export_write(tmp_path):
    """SAELens 6 (in its venv) loads save_saelens's output and decodes the same atoms."""
    python = ROOT / ".venv-saelens" / "bin" / "python"
    if not python.exists():
        pytest.skip("no .venv-saelens; run scripts/make_real_checkpoints.sh first")
    from fbloop.targets.checkpoints import save_saelens
    from fbloop.store import Store
    from fbloop.store.export import export_factor_saelens

    rng = np.random.default_rng(0)
    w_dec = rng.standard_normal((10, 4)).astype(np.float32)
    save_saelens(tmp_path / "sae", W_enc=w_dec.T, b_enc=np.zeros(10), W_dec=w_dec, b_dec=np.zeros(4),
                 cfg={"model_name": "gpt2-small", "hook_name": "blocks.6.hook_resid_pre", "hook_layer": 6,
                      "neuronpedia_id": "gpt2-small/6-res-jb"})
    u = rng.standard_normal((7, 3))
    with Store(tmp_path / "f.db") as db:
        db.create_run("F", kind="pair", p=7, budget=1, config={}, target={"name": "t"}, anchor=None)
        db.save_factor("F", u)
        export_factor_saelens(db, "F", tmp_path / "factor")
    code = (
        "import json, sys, torch\n"
        "from sae_lens import SAE\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    sae = SAE.load_from_disk(name)\n"
        "    atoms = sae.decode(torch.eye(sae.cfg.d_sae)) - sae.decode(torch.zeros(1, sae.cfg.d_sae))\n"
        "    out[name] = {'atoms': atoms.tolist(), 'model': sae.cfg.metadata.model_name,\n"
        "                 'hook': sae.cfg.metadata.hook_name, 'np': sae.cfg.metadata.neuronpedia_id}\n"
        "print(json.dumps(out))\n")
    proc = subprocess.run([str(python), "-c", code, str(tmp_path / "sae"), str(tmp_path / "factor")],
                          check=True, capture_output=True, text=True)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    sae = got[str(tmp_path / "sae")]
    np.testing.assert_allclose(np.array(sae["atoms"]), w_dec, rtol=1e-6, atol=1e-6)
    assert (sae["model"], sae["hook"], sae["np"]) == ("gpt2-small", "blocks.6.hook_resid_pre", "gpt2-small/6-res-jb")
    factor = np.array(got[str(tmp_path / "factor")]["atoms"])
    np.testing.assert_allclose(factor @ factor.T, u @ u.T, rtol=1e-5, atol=1e-5)
    _ = sys


# ---------------------------------------------------------------- Neuronpedia beside a real checkpoint


def neuronpedia_record(index: int, description: str, layer: str = "3-res-tiny", model: str = "pythia-70m-deduped",
                       explainer: str = "gpt-4o-mini", score: float | None = None) -> dict:
    """One record as Neuronpedia's explanations/batch-N.jsonl.gz serves it."""
    return {"id": f"clx{index:05d}", "modelId": model, "layer": layer, "index": str(index),
            "description": description, "explanationModelName": explainer, "typeName": "oai_token-act-pair",
            "authorId": "clsxqq2xd0000vvp2k5itlhqj", "scores": [] if score is None else [{"value": score}],
            "embedding": None, "createdAt": "2024-07-30T22:24:05.713Z"}


def write_batch(folder: Path, name: str, records: list[dict]) -> Path:
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    return path


@pytest.fixture
def real_sae(tmp_path) -> Path:
    return Path(shutil.copytree(REAL / "saelens" / "standard", tmp_path / "sae"))  # neuronpedia_id …/3-res-tiny


def test_neuronpedia_batches_beside_a_real_checkpoint_are_attached(real_sae):
    write_batch(real_sae / "explanations", "batch-0.jsonl.gz",
                [neuronpedia_record(0, "numbers"), neuronpedia_record(5, 'say "hi"')])
    write_batch(real_sae / "explanations", "batch-1.jsonl.gz", [neuronpedia_record(31, "end of text")])
    t = load_target(f"saelens:{real_sae}")
    assert (t.descriptions[0], t.descriptions[5], t.descriptions[31]) == ("numbers", 'say "hi"', "end of text")
    assert t.meta["described"] == 3 and t.meta["descriptions"].endswith("explanations")


def test_mismatched_neuronpedia_batch_is_refused(real_sae, tmp_path):
    from fbloop.errors import TargetFileError

    other = write_batch(tmp_path / "np", "batch-0.jsonl.gz", [neuronpedia_record(0, "x", layer="5-res-tiny")])
    with pytest.raises(TargetFileError, match=r"'pythia-70m-deduped/5-res-tiny'.*'pythia-70m-deduped/3-res-tiny'"):
        load_target(f"saelens:{real_sae};descriptions={other}")
    assert load_target(f"saelens:{real_sae};descriptions={other};force_descriptions=1").descriptions[0] == "x"
    mixed = write_batch(tmp_path / "mixed", "batch-0.jsonl.gz",
                        [neuronpedia_record(0, "a"), neuronpedia_record(1, "b", model="gpt2-small")])
    with pytest.raises(TargetFileError, match="name 2 SAEs"):
        load_target(f"saelens:{real_sae};descriptions={mixed}")


def test_several_explanations_per_feature_choose_by_model_then_score(real_sae, tmp_path):
    batch = write_batch(tmp_path / "np", "batch-0.jsonl.gz", [
        neuronpedia_record(2, "first, unscored"),
        neuronpedia_record(2, "high score", explainer="claude-3-5-sonnet", score=0.8),
        neuronpedia_record(2, "low score", explainer="gpt-4o", score=0.3),
    ])
    assert load_target(f"saelens:{real_sae};descriptions={batch}").descriptions[2] == "high score"
    chosen = load_target(f"saelens:{real_sae};descriptions={batch};explanation_model=gpt-4o")
    assert chosen.descriptions[2] == "low score"


def test_cli_target_descriptions_option(real_sae, tmp_path):
    from click.testing import CliRunner

    from fbloop.cli import main

    batch = write_batch(tmp_path / "np", "batch-0.jsonl.gz", [neuronpedia_record(1, "one")])
    res = CliRunner().invoke(main, ["target", f"saelens:{real_sae}", "--descriptions", str(batch), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["described"] == 1 and info["model_name"] == "pythia-70m-deduped" and info["layer"] == 3
    assert info["decoder_convention"] == "W_dec rows as stored"
    bad = write_batch(tmp_path / "bad", "batch-0.jsonl.gz", [neuronpedia_record(1, "one", layer="9-res")])
    res = CliRunner().invoke(main, ["target", f"saelens:{real_sae}", "--descriptions", str(bad)])
    assert res.exit_code != 0 and "9-res" in res.output and "--force-descriptions" in res.output
