"""What the app shows, computed outside the UI: PCC curves and Φ̂ beside Φ*."""

from __future__ import annotations

import numpy as np

from .store import Store
from .targets import load_target

HEATMAP_MAX_P = 256  # beyond this a heatmap is unreadable and Φ is too big to form


def pcc_curve(store: Store, run_id: str) -> dict[str, list]:
    """The run's PCC snapshots: ``{"answers": [...], "pcc": [...]}``."""
    snaps = [s for s in store.snapshots(run_id) if s["pcc"] is not None]
    return {"answers": [s["answers"] for s in snaps], "pcc": [s["pcc"] for s in snaps]}


def phi_pair(store: Store, run_id: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(Φ̂, Φ*)`` scaled to unit max-abs for side-by-side heatmaps, or ``None``.

    ``None`` when the run has no final factor yet or ``p`` is too large to draw.
    """
    run = store.require_run(run_id)
    factor = store.load_factor(run_id)
    if factor is None or run["p"] > HEATMAP_MAX_P:
        return None
    target = load_target(run["config"]["target"])
    hat, star = factor @ factor.T, target.phi()
    return hat / np.max(np.abs(hat)), star / np.max(np.abs(star))
