"""A run's answers as files another tool reads: CSV, JSONL, Parquet, and cblearn-style triplets.

Every format has one row per stored answer (any status, attention checks included),
in ``seq`` order, with these columns (:data:`COLUMNS`):

| column | type | meaning |
|---|---|---|
| ``run_id`` | str | the run |
| ``seq`` | int | the query's position in the design |
| ``kind`` | str | ``pair`` (equality scale against the anchor), ``triplet``, ``closest`` (closest of k), ``rank`` (rank k) or ``odd`` (odd one out of three) |
| ``basis`` | str | ``feature``: indices are SAE features; ``eigen``: indices are eigenvectors of ``Φ*`` (descending eigenvalue), values their coefficients |
| ``held_out`` | bool | in the run's held-out set (stored, never learned from) |
| ``agent`` | str | who answered (``oracle``, a model name, ``human:<name>``, …) |
| ``attempt`` | int | the retry this answer came from (0 first) |
| ``status`` | str | ``ok``, ``invalid``, ``refused``, … |
| ``value`` | float | pairs: ``c = uᵀΦu / yᵀΦy``; triplets: +1 first, −1 second, 0 equal; closest: the candidate 1…k, 0 no clear winner; rank: the ranking's Lehmer code (``ranking`` spells it out); odd: the item 1…3; empty unless ``ok`` |
| ``raw`` | str | the agent's raw reply, when kept |
| ``meta`` | object | per-answer extras (latency, annotator, check); a nested object in JSONL, JSON text in CSV and Parquet (the Parquet field says ``encoding: json``) |
| ``created_at`` | float | Unix time |
| ``a_indices``, ``a_values`` | list | the first activation (pairs: ``u``); lists in JSONL and Parquet, JSON text in CSV |
| ``b_*``, ``c_*`` | list | triplets: the two candidates; odd: items 2 and 3 (``a_*`` is item 1); empty otherwise |
| ``cands_indices``, ``cands_values`` | list of lists | closest and rank: the ``k`` candidates (``a_*`` is the reference); empty otherwise |
| ``ranking`` | list | rank: the candidates 1…k, closest first, decoded from ``value``; empty otherwise |

A sidecar ``<out>.meta.json`` (and, in Parquet, the schema's ``fbloop`` key) holds the
run: id, kind, ``p``, basis, the design config, the anchor ``y`` (indices and values in
the run's basis), the held-out share and seed, the target summary and these column
descriptions. Pair values are only meaningful against that anchor.

``cblearn`` writes an ``.npz`` of ``queries`` ``(n, 3)`` (int: rows of ``objects``),
``responses`` ``(n,)`` (bool: ``True`` when the reference is closer to the first
candidate than to the second, cblearn's triplet convention), ``objects_indices`` /
``objects_values`` ``(m, s)`` (the distinct activations, zero-padded) and ``seq``;
only ``ok`` triplet answers with a strict preference (value ±1) are kept.

No SQL here: rows come from :meth:`Store.answer_rows`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import StoreError
from ..records import ranking_from_code

if TYPE_CHECKING:
    from .core import Store

FORMATS = ("csv", "jsonl", "parquet", "cblearn")
COLUMNS = ("run_id", "seq", "kind", "basis", "held_out", "agent", "attempt", "status", "value", "raw", "meta",
           "created_at", "a_indices", "a_values", "b_indices", "b_values", "c_indices", "c_values",
           "cands_indices", "cands_values", "ranking")
_SUFFIX = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet", ".npz": "cblearn"}


def export_format(path: str | Path, fmt: str | None) -> str:
    """The format asked for, or the one the file's suffix names."""
    if fmt is None:
        suffix = Path(path).suffix.lower()
        fmt = _SUFFIX.get(suffix)
        if fmt is None:
            raise StoreError(f"Unknown export format {suffix.lstrip('.')!r} (from {str(path)!r}); use a suffix "
                             f"among {sorted(_SUFFIX)} or give the format, one of {list(FORMATS)}.")
    if fmt not in FORMATS:
        raise StoreError(f"Unknown export format {fmt!r}; expect one of {list(FORMATS)}.")
    return fmt


def run_header(store: Store, run_id: str) -> dict:
    """What the sidecar says about a run: basis, design, anchor, held-out set, target, columns."""
    run = store.require_run(run_id)
    config = run["config"]
    design = config.get("design") or {}
    anchor = run["anchor"]
    return {
        "run_id": run_id, "kind": run["kind"], "p": run["p"], "basis": _basis(config),
        "design": design, "agent": config.get("agent"), "seed": config.get("seed"),
        "holdout_share": config.get("holdout") or 0.0,
        "anchor": None if anchor is None else {"indices": anchor.indices[0].tolist(),
                                               "values": anchor.values[0].tolist()},
        "target": run["target"], "columns": list(COLUMNS),
        "notes": ("basis 'eigen': indices are eigenvectors of Φ* (descending eigenvalue), values their "
                  "coefficients; pair values are c = uᵀΦu / yᵀΦy against 'anchor'."),
    }


def rows(store: Store, run_id: str):
    """The export rows (see :data:`COLUMNS`), ``meta`` parsed to an object, in ``seq`` order."""
    from .. import seeding

    header = run_header(store, run_id)
    share, seed = header["holdout_share"], header["seed"] or 0
    for row in store.answer_rows(run_id):
        out = {k: row.get(k) for k in COLUMNS}
        out["basis"] = header["basis"]
        out["held_out"] = bool(share) and bool(seeding.held_out(seed, np.array([row["seq"]]), share)[0])
        out["meta"] = json.loads(row["meta"]) if isinstance(row.get("meta"), str) else row.get("meta")
        if row["kind"] == "rank" and row["status"] == "ok" and row.get("value") is not None:
            k = len(row["cands_indices"])
            out["ranking"] = (ranking_from_code(np.array([row["value"]]), k)[0] + 1).tolist()
        yield out


def export(store: Store, run_id: str, path: str | Path, fmt: str | None = None) -> int:
    """Write a run's answers to ``path`` (and ``<path>.meta.json``); returns the rows written.

    Written to a temporary name and renamed, so a failed export leaves nothing behind.
    """
    path = Path(path)
    fmt = export_format(path, fmt)
    header = run_header(store, run_id)  # an unknown run fails here, before any file is opened
    tmp = path.with_name(path.name + ".partial")
    try:
        n = {"csv": _csv, "jsonl": _jsonl, "parquet": _parquet, "cblearn": _cblearn}[fmt](
            store, run_id, tmp, header)
        sidecar = path.with_name(path.name + ".meta.json")
        sidecar.write_text(json.dumps({**header, "format": fmt, "rows": n}, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return n


def _csv(store: Store, run_id: str, tmp: Path, header: dict) -> int:
    n = 0
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in rows(store, run_id):
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
            n += 1
    return n


def _jsonl(store: Store, run_id: str, tmp: Path, header: dict) -> int:
    n = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows(store, run_id):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def _parquet(store: Store, run_id: str, tmp: Path, header: dict) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a dependency
        raise StoreError("Parquet export needs pyarrow (pip install pyarrow).") from exc
    ints, floats = pa.list_(pa.int32()), pa.list_(pa.float64())
    schema = pa.schema([
        ("run_id", pa.string()), ("seq", pa.int64()), ("kind", pa.string()), ("basis", pa.string()),
        ("held_out", pa.bool_()), ("agent", pa.string()), ("attempt", pa.int64()), ("status", pa.string()),
        ("value", pa.float64()), ("raw", pa.string()), ("meta", pa.string()), ("created_at", pa.float64()),
        ("a_indices", ints), ("a_values", floats), ("b_indices", ints), ("b_values", floats),
        ("c_indices", ints), ("c_values", floats), ("cands_indices", pa.list_(ints)),
        ("cands_values", pa.list_(floats)), ("ranking", ints),
    ], metadata={"fbloop": json.dumps(header)})
    # meta varies per agent (no fixed struct): JSON text in a column whose field metadata says so.
    schema = schema.set(schema.get_field_index("meta"),
                        pa.field("meta", pa.string(), metadata={"encoding": "json"}))
    data = {k: [] for k in COLUMNS}
    for row in rows(store, run_id):
        for k in COLUMNS:
            v = row[k]
            data[k].append(json.dumps(v) if k == "meta" and v is not None else v)
    pq.write_table(pa.table(data, schema=schema), tmp)
    return len(data["seq"])


def _cblearn(store: Store, run_id: str, tmp: Path, header: dict) -> int:
    if header["kind"] != "triplet":
        raise StoreError(f"Run {run_id!r} asks {header['kind']} queries; the cblearn export is for triplet runs.")
    objects: dict[tuple, int] = {}
    queries, responses, seqs = [], [], []
    for row in rows(store, run_id):
        if row["status"] != "ok" or row["value"] not in (1.0, -1.0):
            continue
        ids = []
        for name in "abc":
            key = tuple(zip(row[f"{name}_indices"], row[f"{name}_values"]))
            key = tuple(sorted((i, v) for i, v in key if v != 0))
            ids.append(objects.setdefault(key, len(objects)))
        queries.append(ids)
        responses.append(row["value"] == 1.0)
        seqs.append(row["seq"])
    s = max((len(k) for k in objects), default=1) or 1
    obj_idx = np.zeros((len(objects), s), np.int64)
    obj_val = np.zeros((len(objects), s))
    for key, i in objects.items():
        if key:
            obj_idx[i, : len(key)], obj_val[i, : len(key)] = zip(*key)
    with tmp.open("wb") as fh:
        np.savez(fh, queries=np.array(queries, np.int64).reshape(-1, 3), responses=np.array(responses, bool),
                 objects_indices=obj_idx, objects_values=obj_val, seq=np.array(seqs, np.int64))
    return len(queries)


def _basis(config: dict) -> str:
    design = (config.get("design") or {}).get("name")
    return "eigen" if design == "eigen" else "feature"


# ---------------------------------------------------------------- the learned factor

PHI_EXPORT_MAX_P = 4096  # Φ̂ (p × p float32) is written beside U up to this p: 64 MiB


def _learned(store: Store, run_id: str) -> np.ndarray:
    store.require_run(run_id)
    u = store.load_factor(run_id)
    if u is None:
        raise StoreError(f"Run {run_id!r} has no saved factor yet (it is saved when a run finishes or "
                         "is interrupted); finish or resume the run first.")
    return u


def export_factor(store: Store, run_id: str, path: str | Path) -> dict:
    """Write the learned ``U`` (``p × r``, feature coordinates, ``Φ̂ = U Uᵀ``) to safetensors, with
    ``phi_hat`` (``p × p``) when ``p ≤ PHI_EXPORT_MAX_P``; float32. The header names the run."""
    from safetensors.numpy import save_file

    u = _learned(store, run_id)
    tensors = {"U": np.ascontiguousarray(u, dtype=np.float32)}
    if u.shape[0] <= PHI_EXPORT_MAX_P:
        tensors["phi_hat"] = np.ascontiguousarray(u @ u.T, dtype=np.float32)
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata={"run_id": run_id, "format": "fbloop.factor",
                                           "note": "phi_hat = U @ U.T, feature coordinates"})
    _user_mode(tmp)
    tmp.replace(path)
    return {"U": list(u.shape), "phi_hat": "phi_hat" in tensors}


def export_factor_saelens(store: Store, run_id: str, folder: str | Path) -> dict:
    """Write ``Φ̂`` as a SAELens directory SAELens 6 loads: the dictionary ``D = Uᵀ`` (``r × p``), so
    ``W_dec = U`` (``d_sae = p`` rows, ``d_in = r``), ``W_enc = Uᵀ``, zero biases, architecture
    ``standard``; ``fbloop target saelens:DIR`` gives back ``Φ* = U Uᵀ = Φ̂``."""
    from ..targets.checkpoints import save_saelens

    u = _learned(store, run_id)
    p, r = u.shape
    run = store.require_run(run_id)
    save_saelens(folder, W_enc=u.T, b_enc=np.zeros(p), W_dec=u, b_dec=np.zeros(r),
                 cfg={"architecture": "standard", "model_name": "fbloop",
                      "hook_name": f"fbloop.factor.{run_id}",
                      "fbloop_run": run_id, "fbloop_target": run["target"].get("name")})
    return {"d_in": r, "d_sae": p}


def _user_mode(path: Path) -> None:
    import os

    umask = os.umask(0)  # safetensors writes 0600
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
