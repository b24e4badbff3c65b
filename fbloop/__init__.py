"""fbloop: recover a neural network's feature matrix Φ = DᵀD from feedback.

Implements Kumar, "The Complexity of Learning Sparse Superposed Features with
Feedback" (ICML 2025) as a working loop: targets → query designs → agents →
SQLite → learners → PCC readout.
"""

import importlib

# Public names, by the module that defines them. They load on first use (PEP 562), so that
# `fbloop --help` and `import fbloop.cli` do not pull in numpy, torch and scipy (~4 s).
_EXPORTS = {
    "queries.active": ("ActiveConfig", "ActiveStrategy", "NoiseModel"),
    "agents": ("Agent", "OracleAgent", "OracleConfig"),
    "records": ("Answers", "Queries"),
    "queries.designs": ("DESIGNS", "DesignConfig"),
    "queries.catalogue": ("bound", "design_count", "make_design"),
    "errors": ("ConfigError", "FbloopError", "NonFiniteError", "NonPSDError", "ShapeError", "StoreError",
               "TargetFileError"),
    "learners": ("GradientLearner", "LearnerConfig"),
    "loop": ("RunConfig", "RunResult", "run_loop"),
    "metrics": ("pcc", "pcc_factored", "relative_error", "triplet_agreement"),
    "agents.pool": ("AgentPool", "MemberConfig", "MemberSpec", "PoolConfig", "parse_member"),
    "sparse": ("SparseBatch",),
    "store": ("Store",),
    "targets": ("SyntheticConfig", "Target", "from_dictionary", "from_phi", "load_target", "synthetic"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'fbloop' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))


__all__ = [name for names in _EXPORTS.values() for name in names]
