"""Write tiny SAE checkpoints with the real packages, and the atoms each package's own loader decodes.

    python scripts/make_real_checkpoints.py saelens  OUT   # inside a venv with sae-lens
    python scripts/make_real_checkpoints.py dictlearn OUT  # inside a venv with dictionary-learning

``scripts/make_real_checkpoints.sh`` builds both venvs and runs both parts into
``tests/fixtures/real``. Every checkpoint folder gets ``expect.json``:
``{"package", "version", "kind", "loader", "note"}`` and either ``decoded_atoms.npy``
(``(d_sae, d_out)``: the package's decode of each one-hot latent minus its decode of
zero, float32 as the package computes it) or ``"refuse": "<words the refusal must contain>"``.

Sizes are tiny (``d_in = 12``, ``d_sae = 32``) and weights deterministic, so the
committed fixtures stay small; decoder rows get log-normal norms so that any decoder
norm convention (rescaling, normalisation) shows in the atoms.

sparsify (EleutherAI) and Gemma Scope files are written by the ``saelens`` part in
their documented layouts (``layers.N/cfg.json`` + ``sae.safetensors``; ``params.npz``)
and decoded by SAELens's JumpReLU SAE (Gemma Scope, as SAELens's Gemma loader maps
its keys) or by sparsify's rule ``latents @ W_dec`` (sparsify is not installed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

D_IN, D_SAE, K = 12, 32, 4
MODEL = "pythia-70m-deduped"


def lognormal_rows(gen: torch.Generator, n: int, d: int) -> torch.Tensor:
    w = torch.randn(n, d, generator=gen)
    w = w / w.norm(dim=1, keepdim=True)
    return w * torch.exp(0.5 * torch.randn(n, 1, generator=gen))  # norms e^{N(0, 0.25)}


def write_expect(folder: Path, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "expect.json").write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")


def save_atoms(folder: Path, decode, d_sae: int) -> None:
    with torch.no_grad():
        eye = torch.eye(d_sae)
        atoms = decode(eye) - decode(torch.zeros(1, d_sae))
    np.save(folder / "decoded_atoms.npy", atoms.float().numpy())  # float32: what the package computes in


# ---------------------------------------------------------------- SAELens


def saelens(out: Path) -> None:
    import sae_lens
    from safetensors.torch import save_file
    from sae_lens import SAE, TrainingSAE
    from sae_lens.saes.sae import SAEMetadata

    version = sae_lens.__version__
    gen = torch.Generator().manual_seed(0)

    def meta(layer: int) -> SAEMetadata:
        return SAEMetadata(model_name=MODEL, hook_name=f"blocks.{layer}.hook_resid_post",
                           neuronpedia_id=f"{MODEL}/{layer}-res-tiny", hook_head_index=None,
                           prepend_bos=True, context_size=128, dataset_path="tiny")

    def randomise(sae) -> None:
        with torch.no_grad():
            sae.W_dec.copy_(lognormal_rows(gen, *sae.W_dec.shape))
            sae.W_enc.copy_(torch.randn(*sae.W_enc.shape, generator=gen) * 0.3)
            sae.b_dec.copy_(0.1 * torch.randn(*sae.b_dec.shape, generator=gen))
            for name in ("b_enc", "b_gate", "b_mag", "r_mag"):
                if isinstance(getattr(sae, name, None), torch.nn.Parameter):
                    getattr(sae, name).copy_(0.05 * torch.randn(D_SAE, generator=gen))

    def inference(name: str, cfg_cls: str, note: str, **kw) -> None:
        cls = getattr(sae_lens, cfg_cls)
        cfg = cls(d_in=D_IN, d_sae=D_SAE, dtype="float32", device="cpu", metadata=meta(3), **kw)
        sae = sae_lens.registry.get_sae_class(cfg.architecture())[0](cfg)
        randomise(sae)
        folder = out / "saelens" / name
        sae.save_model(folder)
        loaded = SAE.load_from_disk(folder)
        save_atoms(folder, loaded.decode, D_SAE)
        write_expect(folder, package="sae-lens", version=version, kind=name, loader="SAE.load_from_disk",
                     writer="save_model", note=note)

    inference("standard", "StandardSAEConfig", "standard SAE")
    inference("topk", "TopKSAEConfig", "topk, rescale_acts_by_decoder_norm false (the default)", k=K)
    inference("topk_rescale", "TopKSAEConfig", "topk with rescale_acts_by_decoder_norm: unit atoms",
              k=K, rescale_acts_by_decoder_norm=True)
    inference("abstopk", "AbsTopKSAEConfig", "abstopk", k=K)
    inference("jumprelu", "JumpReLUSAEConfig", "jumprelu")
    inference("gated", "GatedSAEConfig", "gated")
    inference("matching_pursuit", "MatchingPursuitSAEConfig", "matching pursuit: decode is latents @ W_dec")
    for tc in ("TranscoderConfig", "SkipTranscoderConfig", "JumpReLUTranscoderConfig"):
        cls = getattr(sae_lens, tc)
        cfg = cls(d_in=D_IN, d_sae=D_SAE, d_out=8, dtype="float32", device="cpu", metadata=meta(2),
                  apply_b_dec_to_input=False)
        sae = sae_lens.registry.get_sae_class(cfg.architecture())[0](cfg)
        randomise(sae)
        name = cfg.architecture()
        folder = out / "saelens" / name
        sae.save_model(folder)
        loaded = SAE.load_from_disk(folder)
        save_atoms(folder, loaded.decode, D_SAE)
        write_expect(folder, package="sae-lens", version=version, kind=name, loader="SAE.load_from_disk",
                     writer="save_model", note="transcoder: W_dec maps latents to the output space (d_out 8)")

    # Training SAEs: save_model keeps the training config (rescaling on for batchtopk), and
    # save_inference_model writes what inference loads (batchtopk → jumprelu, norms folded).
    def training(name: str, cfg_cls: str, note: str, whiten: bool = False, **kw) -> None:
        cls = getattr(sae_lens, cfg_cls)
        cfg = cls(d_in=D_IN, d_sae=D_SAE, dtype="float32", device="cpu", metadata=meta(4), **kw)
        sae = sae_lens.registry.get_sae_training_class(cfg.architecture())[0](cfg)
        randomise(sae)
        folder = out / "saelens" / f"training_{name}"
        sae.save_model(folder)
        loaded = TrainingSAE.load_from_disk(folder)
        loader = "TrainingSAE.load_from_disk"
        if whiten:  # an intermediate checkpoint of a covariance_whitening run, with its scaler files
            a = torch.randn(D_IN, D_IN, generator=gen) * 0.3 + torch.eye(D_IN)
            mean = 0.2 * torch.randn(D_IN, generator=gen)
            save_file({"mean": mean, "matrix": a.contiguous(), "inverse_matrix": torch.linalg.inv(a).contiguous()},
                      folder / "activation_whitening.safetensors")
            scale = 1.7
            (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": scale,
                                                                       "has_whitening": True}))
            # What the end of training does (SAETrainer.fit): fold the scaling, then the whitening.
            loaded.fold_activation_norm_scaling_factor(scale)
            loaded.fold_activation_whitening(mean, a, torch.linalg.inv(a))
            loader += " + fold_activation_norm_scaling_factor + fold_activation_whitening"
        save_atoms(folder, loaded.decode, D_SAE)
        write_expect(folder, package="sae-lens", version=version, kind=f"training_{name}", loader=loader,
                     writer="save_model (training checkpoint)", note=note)
        if not whiten:
            inf = out / "saelens" / f"inference_{name}"
            sae.save_inference_model(inf)
            loaded = SAE.load_from_disk(inf)
            save_atoms(inf, loaded.decode, D_SAE)
            write_expect(inf, package="sae-lens", version=version, kind=f"inference_{name}",
                         loader="SAE.load_from_disk", writer="save_inference_model", note=note)

    training("standard", "StandardTrainingSAEConfig", "standard training SAE")
    training("topk", "TopKTrainingSAEConfig", "topk training SAE (rescale_acts_by_decoder_norm default)", k=K)
    training("batchtopk", "BatchTopKTrainingSAEConfig", "batchtopk: rescale_acts_by_decoder_norm true", k=K)
    training("matryoshka_batchtopk", "MatryoshkaBatchTopKTrainingSAEConfig", "matryoshka batchtopk",
             k=K, matryoshka_widths=[8, 32])
    training("jumprelu", "JumpReLUTrainingSAEConfig", "jumprelu training SAE")
    training("gated", "GatedTrainingSAEConfig", "gated training SAE")
    training("topk_whitened", "TopKTrainingSAEConfig", "intermediate checkpoint of a whitened, scaled run",
             whiten=True, k=K, normalize_activations="covariance_whitening")

    # Gemma Scope: params.npz (w_ keys mapped to W_ by SAELens's loader), decoded by SAELens's JumpReLU SAE.
    w_dec = lognormal_rows(gen, D_SAE, D_IN)
    params = {"W_enc": (torch.randn(D_IN, D_SAE, generator=gen) * 0.3), "W_dec": w_dec,
              "b_enc": 0.05 * torch.randn(D_SAE, generator=gen), "b_dec": 0.1 * torch.randn(D_IN, generator=gen),
              "threshold": 0.1 * torch.rand(D_SAE, generator=gen)}
    folder = out / "gemmascope" / "layer_3" / "width_32" / "average_l0_7"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in params.items()})
    cfg = sae_lens.JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, dtype="float32", device="cpu")
    gemma = sae_lens.JumpReLUSAE(cfg)
    gemma.load_state_dict({k: v.clone() for k, v in params.items()})
    save_atoms(folder, gemma.decode, D_SAE)
    write_expect(folder, package="sae-lens", version=version, kind="gemmascope",
                 loader="JumpReLUSAE with the params.npz state dict (as gemma_2_sae_huggingface_loader maps it)",
                 writer="numpy.savez", note="Gemma Scope params.npz")

    # sparsify: layers.N/{cfg.json, sae.safetensors}; decode = latents @ W_dec + b_dec.
    w_dec = lognormal_rows(gen, D_SAE, D_IN)
    folder = out / "sparsify" / "layers.5"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"encoder.weight": (torch.randn(D_SAE, D_IN, generator=gen) * 0.3).contiguous(),
               "encoder.bias": torch.zeros(D_SAE), "W_dec": w_dec.contiguous(),
               "b_dec": 0.1 * torch.randn(D_IN, generator=gen)}, folder / "sae.safetensors")
    (folder / "cfg.json").write_text(json.dumps({"expansion_factor": 3, "normalize_decoder": True,
                                                 "num_latents": D_SAE, "k": K, "multi_topk": False,
                                                 "skip_connection": False, "d_in": D_IN}))
    (folder.parent / "config.json").write_text(json.dumps({"model": MODEL, "hookpoints": ["layers.5"]}))
    np.save(folder / "decoded_atoms.npy", w_dec.float().numpy())
    write_expect(folder, package="sparsify-format", version="0", kind="sparsify", loader="latents @ W_dec",
                 writer="safetensors", note="EleutherAI sparsify layout")


# ---------------------------------------------------------------- dictionary_learning


def dictlearn(out: Path) -> None:
    import importlib.metadata

    from dictionary_learning.dictionary import AutoEncoder, AutoEncoderNew, GatedAutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE, BatchTopKTrainer
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer
    from dictionary_learning.trainers.standard import StandardTrainer, StandardTrainerAprilUpdate
    from dictionary_learning.trainers.top_k import AutoEncoderTopK, TopKTrainer
    from dictionary_learning.trainers.gdm import GatedSAETrainer
    from dictionary_learning.trainers.jumprelu import JumpReluTrainer
    from dictionary_learning.training import trainSAE
    from dictionary_learning.utils import load_dictionary

    version = importlib.metadata.version("dictionary-learning")
    torch.manual_seed(0)
    steps = 30
    gen = torch.Generator().manual_seed(1)
    mix = lognormal_rows(gen, 24, D_IN)

    def data():
        while True:  # low-rank, sparse-ish activations: trainers see something to fit
            z = torch.relu(torch.randn(64, 24, generator=gen)) ** 2  # (batch, 24)
            yield 3.0 * z @ mix + 0.5

    common = dict(steps=steps, activation_dim=D_IN, dict_size=D_SAE, layer=3, lm_name=MODEL,
                  submodule_name="gpt_neox.layers.3", device="cpu", seed=0)
    trainers = {
        "standard": dict(trainer=StandardTrainer, dict_class=AutoEncoder, lr=1e-3, l1_penalty=0.1,
                         warmup_steps=2, sparsity_warmup_steps=2),
        "standard_april": dict(trainer=StandardTrainerAprilUpdate, dict_class=AutoEncoder, lr=1e-3,
                               l1_penalty=0.1, warmup_steps=2, sparsity_warmup_steps=2),
        "topk": dict(trainer=TopKTrainer, dict_class=AutoEncoderTopK, k=K, warmup_steps=2),
        "batchtopk": dict(trainer=BatchTopKTrainer, dict_class=BatchTopKSAE, k=K, warmup_steps=2),
        "matryoshka": dict(trainer=MatryoshkaBatchTopKTrainer, k=K, warmup_steps=2,
                           group_fractions=[1 / 3, 2 / 3]),
        "gated": dict(trainer=GatedSAETrainer, dict_class=GatedAutoEncoder, lr=1e-3, l1_penalty=0.1,
                      warmup_steps=2, sparsity_warmup_steps=2),
        "jumprelu": dict(trainer=JumpReluTrainer, dict_class=JumpReluAutoEncoder, lr=1e-3,
                         warmup_steps=2, sparsity_warmup_steps=2),
    }
    for normalize in (False, True):
        for name, extra in trainers.items():
            if normalize and name not in ("standard_april", "topk"):
                continue
            tag = f"{name}_normalized" if normalize else name
            cfg = {**common, **extra}
            try:
                save_dir = out / "dictlearn" / tag
                trainSAE(data(), [cfg], steps=steps, save_dir=str(save_dir), save_steps=[10],
                         normalize_activations=normalize, device="cpu")
            except TypeError as exc:  # a trainer whose signature differs: say which, keep going
                print(f"skip {tag}: {exc}", file=sys.stderr)
                continue
            trainer_dir = save_dir / "trainer_0"
            ae, _ = load_dictionary(str(trainer_dir), device="cpu")
            save_atoms(trainer_dir, ae.decode, D_SAE)
            write_expect(trainer_dir, package="dictionary-learning", version=version, kind=tag,
                         loader="utils.load_dictionary", writer="training.trainSAE",
                         note=f"{extra['trainer'].__name__}; normalize_activations={normalize}")
            ckpt = trainer_dir / "checkpoints"
            for step_file in sorted(ckpt.glob("ae_*.pt")):
                # An intermediate checkpoint: the same class, loaded from that state dict.
                dict_class = type(ae)
                state = torch.load(step_file, weights_only=True)
                if dict_class is AutoEncoder:
                    tmp = dict_class.from_pretrained(str(step_file), device="cpu")
                elif dict_class in (AutoEncoderTopK, BatchTopKSAE) or "Matryoshka" in dict_class.__name__:
                    tmp = dict_class.from_pretrained(str(step_file), k=K, device="cpu")
                else:
                    tmp = dict_class.from_pretrained(str(step_file), device="cpu")
                del state
                np.save(ckpt / f"{step_file.stem}.decoded_atoms.npy",
                        (tmp.decode(torch.eye(D_SAE)) - tmp.decode(torch.zeros(1, D_SAE))).detach().float().numpy())
    _ = AutoEncoderNew  # AutoEncoderNew has no trainer in 0.1.0; it is written directly:
    ae = AutoEncoderNew(D_IN, D_SAE)
    with torch.no_grad():
        ae.decoder.weight.copy_(lognormal_rows(gen, D_SAE, D_IN).T)
    folder = out / "dictlearn" / "autoencodernew" / "trainer_0"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in ae.state_dict().items()}, folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": "AutoEncoderNew",
                                                                "activation_dim": D_IN, "dict_size": D_SAE,
                                                                "layer": 3, "lm_name": MODEL}}, indent=4))
    loaded, _ = load_dictionary(str(folder), device="cpu")
    save_atoms(folder, loaded.decode, D_SAE)
    write_expect(folder, package="dictionary-learning", version=version, kind="autoencodernew",
                 loader="utils.load_dictionary", writer="torch.save(AutoEncoderNew.state_dict())",
                 note="AutoEncoderNew (no trainer in 0.1.0)")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("saelens", "dictlearn"):
        sys.exit("usage: make_real_checkpoints.py {saelens|dictlearn} OUT")
    {"saelens": saelens, "dictlearn": dictlearn}[sys.argv[1]](Path(sys.argv[2]))
