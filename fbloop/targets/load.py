"""Target specs and files: ``load_target`` builds the target a spec string names (see :mod:`.target`
for the specs), the RFM target, and reading or writing ``Φ*`` / dictionary files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, NonFiniteError, NonPSDError, ShapeError, TargetFileError
from .target import SyntheticConfig, Target, from_dictionary, from_phi, synthetic


def rfm_target(figure: int = 1, seed: int = 0) -> Target:
    """The paper's Recursive Feature Machine target: ``Φ* = M`` (10 × 10)."""
    from . import rfm as rfm_mod

    result = rfm_mod.fit_rfm(rfm_mod.RFMConfig(figure=figure, seed=seed))
    target = from_phi(result.M, name=f"rfm(figure={figure},seed={seed})")
    return Target(target.name, target.factor,
                  tuple(f"input coordinate x{i}" for i in range(target.p)),
                  {"kind": "rfm", "figure": figure, "seed": seed})


# ---------------------------------------------------------------- files

_DICT_KEYS = ("D", "dictionary", "W_dec")
_PHI_KEYS = ("phi", "Phi", "M")


def _read_array(path: Path, keys: tuple[str, ...]) -> np.ndarray:
    if not path.exists():
        raise TargetFileError(f"{path}: no such file.")
    try:
        if path.suffix == ".npy":
            return _read_npy(path)
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
            for key in keys:
                if key in tensors:
                    return tensors[key]
            if len(tensors) == 1:
                return next(iter(tensors.values()))
            raise TargetFileError(f"{path}: expect one tensor or a key among {list(keys)}, "
                                  f"got keys {sorted(tensors)}.")
    except TargetFileError:
        raise
    except Exception as exc:  # truncated or corrupt file: numpy/safetensors raise many types
        raise TargetFileError(f"{path}: cannot read ({type(exc).__name__}: {exc}).") from exc
    raise TargetFileError(f"{path}: unknown file type {path.suffix!r}; expect .npy or .safetensors.")


def _floats(path: Path, array: np.ndarray) -> np.ndarray:
    """Weights must be floating point: an int8 or bool array is quantised or not weights at all."""
    if not np.issubdtype(array.dtype, np.floating):
        raise TargetFileError(f"{path}: holds dtype {array.dtype}; expect floating-point weights "
                              "(float16, float32, float64). Dequantise an integer checkpoint first.")
    return array


def _read_npy(path: Path) -> np.ndarray:
    """A numeric ``.npy`` array; anything else is refused by name, never unpickled."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        raise TargetFileError(f"{path}: not a .npy file (no NumPy header); expect a numeric array "
                              "written by numpy.save.")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):  # an object array: numpy would need to unpickle it
            raise TargetFileError(f"{path}: holds an object array, which fbloop never unpickles; expect a "
                                  "numeric array written by numpy.save.") from exc
        raise
    return array


def _naming_file(path: Path, build):
    """Build a target from a file; any validation error names the file, once."""
    try:
        return build()
    except (ShapeError, NonFiniteError, NonPSDError) as exc:
        # The target is named after the file: drop that name so the message names the file once.
        raise type(exc)(f"{path}: {str(exc).replace(f' {path.name!r}', '')}") from exc


def load_phi(path: str | Path) -> Target:
    path = Path(path)
    return _naming_file(path, lambda: from_phi(_floats(path, _read_array(path, _PHI_KEYS)), name=path.name))


def load_dictionary(path: str | Path) -> Target:
    path = Path(path)
    return _naming_file(path, lambda: from_dictionary(_floats(path, _read_array(path, _DICT_KEYS)), name=path.name))


def save_target(target: Target, path: str | Path) -> None:
    """Write a target's factor as a dictionary ``D = Vᵀ`` (``.npy`` or ``.safetensors``)."""
    path = Path(path)
    D = np.ascontiguousarray(target.factor.T)
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({"D": D}, str(path))
        umask = os.umask(0)  # safetensors writes 0600; give the file the mode any new file gets
        os.umask(umask)
        os.chmod(path, 0o666 & ~umask)
    else:
        np.save(path, D)


# ---------------------------------------------------------------- specs


_FILE_KINDS = ("phi", "dict", "saelens", "dictlearn", "sparsify", "gemmascope")
_CHECKPOINT_KINDS = ("saelens", "dictlearn", "sparsify", "gemmascope")
# Options a checkpoint spec takes after its path: "saelens:DIR;descriptions=FILE;force_descriptions=1".
CHECKPOINT_OPTIONS = ("descriptions", "force_descriptions", "explanation_model")


def parse_spec(spec: str) -> tuple[str, dict[str, str], str | None]:
    """``"kind:k=v,k=v"`` → ``(kind, params, path)``; file kinds carry a path instead.

    Checkpoint kinds take options after the path, separated by ``;``
    (``saelens:DIR;descriptions=FILE;explanation_model=gpt-4o-mini``), so the spec stored
    with a run says which descriptions it used.
    """
    kind, _, rest = spec.partition(":")
    kind = kind.strip()
    if kind in _FILE_KINDS:
        path, *options = rest.split(";")
        if not path:
            need = f"a directory: '{kind}:path/to/sae_dir'" if kind in _CHECKPOINT_KINDS \
                else f"a file: '{kind}:path/to/file.npy'"
            raise ConfigError(f"Target {spec!r} needs {need}.")
        params = {}
        for item in filter(None, (x.strip() for x in options)):
            key, eq, value = item.partition("=")
            if not eq or kind not in _CHECKPOINT_KINDS or key.strip() not in CHECKPOINT_OPTIONS:
                allowed = list(CHECKPOINT_OPTIONS) if kind in _CHECKPOINT_KINDS else []
                raise ConfigError(f"Target option {item!r} in {spec!r} is not one of {allowed} (key=value).")
            params[key.strip()] = value.strip()
        return kind, params, path
    params: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"Target parameter {item!r} in {spec!r} is not key=value.")
        params[key.strip()] = value.strip()
    return kind, params, None


def with_descriptions(spec: str, descriptions: str | None, force: bool = False,
                      explanation_model: str | None = None) -> str:
    """A checkpoint spec with description options appended (what ``--descriptions`` does)."""
    if descriptions is None and not force and explanation_model is None:
        return spec
    kind, _, _ = parse_spec(spec)
    if kind not in _CHECKPOINT_KINDS:
        raise ConfigError(f"--descriptions applies to checkpoint targets {list(_CHECKPOINT_KINDS)}, "
                          f"not {kind!r}.")
    extra = [f"descriptions={descriptions}"] * (descriptions is not None) + ["force_descriptions=1"] * force \
        + [f"explanation_model={explanation_model}"] * (explanation_model is not None)
    return ";".join([spec, *extra])


# The paper's SAE shapes (Figures 3 and 5): synthetic defaults each preset overrides.
PRESETS: dict[str, dict[str, int]] = {
    "chessgpt": {"p": 4096, "rank": 512, "d": 512},
    "pythia": {"p": 32768, "rank": 215, "d": 512},
}

TARGET_KINDS = ("synthetic", "chessgpt", "pythia", "rfm", "phi", "dict", "saelens", "dictlearn", "sparsify",
                "gemmascope")


def load_target(spec: str) -> Target:
    """Build the target a spec string names (see the module docstring)."""
    kind, params, path = parse_spec(spec)
    try:
        if kind in PRESETS:
            params = {**{k: str(v) for k, v in PRESETS[kind].items()}, **params}
            target = load_target("synthetic:" + ",".join(f"{k}={v}" for k, v in params.items()))
            factor = target.range_factor()  # keep a (p, rank) factor: the oracle's and the readouts' cost
            return Target(f"{kind}({target.name[len('synthetic('):]}", factor, None,
                          {**target.meta, "preset": kind})
        if kind == "synthetic":
            allowed = {"p", "rank", "d", "norms", "coherence", "seed"}
            unknown = set(params) - allowed
            if unknown:
                raise ConfigError(f"Unknown synthetic target parameter(s) {sorted(unknown)}; "
                                  f"expect {sorted(allowed)}.")
            cfg = SyntheticConfig(
                p=int(params.get("p", 40)),
                rank=int(params.get("rank", 5)),
                d=int(params["d"]) if "d" in params else None,
                norms=params.get("norms", "unit"),  # type: ignore[arg-type]
                coherence=float(params.get("coherence", 0.0)),
                seed=int(params.get("seed", 0)),
            )
            return synthetic(cfg)
        if kind == "rfm":
            unknown = set(params) - {"figure", "seed"}
            if unknown:
                raise ConfigError(f"Unknown rfm target parameter(s) {sorted(unknown)}; expect figure, seed.")
            return rfm_target(int(params.get("figure", 1)), int(params.get("seed", 0)))
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"Bad target spec {spec!r}: {exc}.") from exc
    if kind == "phi":
        return load_phi(path)  # type: ignore[arg-type]
    if kind == "dict":
        return load_dictionary(path)  # type: ignore[arg-type]
    if kind in _CHECKPOINT_KINDS:
        from . import checkpoints  # checkpoints builds on this module

        load = {"saelens": checkpoints.load_saelens, "dictlearn": checkpoints.load_dictionary_learning,
                "sparsify": checkpoints.load_sparsify, "gemmascope": checkpoints.load_gemmascope}[kind]
        force = params.get("force_descriptions", "0").lower() not in ("0", "false", "no", "")
        return load(path, params.get("descriptions"), force_descriptions=force,  # type: ignore[arg-type]
                    explanation_model=params.get("explanation_model"))
    raise ConfigError(f"Unknown target kind {kind!r}; expect one of {list(TARGET_KINDS)}.")
