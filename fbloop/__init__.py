"""fbloop: recover a neural network's feature matrix Φ = DᵀD from feedback.

Implements Kumar, "The Complexity of Learning Sparse Superposed Features with
Feedback" (ICML 2025) as a working loop: targets → query designs → agents →
SQLite → learners → PCC readout.
"""

from .active import ActiveConfig, ActiveStrategy, NoiseModel
from .agents import Agent, Answers, OracleAgent, OracleConfig
from .designs import DESIGNS, DesignConfig, Queries, bound, design_count, make_design
from .errors import (ConfigError, FbloopError, NonFiniteError, NonPSDError, ShapeError, StoreError,
                     TargetFileError)
from .learner import GradientLearner, LearnerConfig
from .loop import RunConfig, RunResult, run_loop
from .metrics import pcc, pcc_factored, relative_error, triplet_agreement
from .pool import AgentPool, MemberConfig, MemberSpec, PoolConfig, parse_member
from .sparse import SparseBatch
from .store import Store
from .targets import SyntheticConfig, Target, from_dictionary, from_phi, load_target, synthetic

__all__ = [
    "ActiveConfig", "ActiveStrategy", "NoiseModel",
    "Agent", "Answers", "OracleAgent", "OracleConfig",
    "DESIGNS", "DesignConfig", "Queries", "bound", "design_count", "make_design",
    "ConfigError", "FbloopError", "NonFiniteError", "NonPSDError", "ShapeError", "StoreError", "TargetFileError",
    "GradientLearner", "LearnerConfig",
    "RunConfig", "RunResult", "run_loop",
    "pcc", "pcc_factored", "relative_error", "triplet_agreement",
    "AgentPool", "MemberConfig", "MemberSpec", "PoolConfig", "parse_member",
    "SparseBatch", "Store",
    "SyntheticConfig", "Target", "from_dictionary", "from_phi", "load_target", "synthetic",
]
