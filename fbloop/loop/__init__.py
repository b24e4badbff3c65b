"""The feedback loop: target → design → agent → store → learner → readout.

Modules: :mod:`.config` (:class:`RunConfig`, :class:`Progress`, :class:`RunResult`), :mod:`.learners`
(which learner a run uses, and what it is given), :mod:`.agents` (who answers a run's queries),
:mod:`.session` (a run's working state: opening, resuming) and :mod:`.run` (:func:`run_loop`, the
loop itself); :mod:`.reproduce` runs the paper's figures through it.
"""

from .agents import make_agent
from .config import AGENTS, LearnerName, Progress, RunConfig, RunResult
from .learners import DIRECT_DESIGNS, EXACT_MAX_P, HeldOut, choose_learner, feed, make_learner
from .run import ACTIVE_STEPS, WATCH_POLL_S, readouts, run_loop
from .session import auto_chunk, default_budget, new_run_id

__all__ = [
    "RunConfig", "Progress", "RunResult", "LearnerName", "AGENTS",
    "choose_learner", "make_learner", "HeldOut", "feed", "EXACT_MAX_P", "DIRECT_DESIGNS",
    "make_agent", "run_loop", "readouts", "default_budget", "auto_chunk", "new_run_id",
    "ACTIVE_STEPS", "WATCH_POLL_S",
]
