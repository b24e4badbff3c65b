"""The feedback loop: target → design → agent → store → learner → readout.

Modules: :mod:`.config` (:class:`RunConfig`, :class:`Progress`,
:class:`RunResult`), :mod:`.learners` (which learner a run uses, and what it is
given), :mod:`.agents` (who answers a run's queries) and :mod:`.run`
(:func:`run_loop`).
"""

from .agents import NativeView, answer_names, make_agent
from .config import AGENTS, LearnerName, Progress, RunConfig, RunResult
from .learners import DIRECT_DESIGNS, EXACT_MAX_P, ExactLearner, HeldOut, choose_learner, feed, make_learner
from .run import ACTIVE_STEPS, auto_chunk, default_budget, new_run_id, readouts, run_loop, top_up_queue

# Re-exported to be read and called; run_loop looks its helpers up in fbloop.loop.run, so patch them there.
__all__ = [
    "RunConfig", "Progress", "RunResult", "LearnerName", "AGENTS",
    "ExactLearner", "choose_learner", "make_learner", "HeldOut", "feed", "EXACT_MAX_P", "DIRECT_DESIGNS",
    "NativeView", "answer_names", "make_agent",
    "run_loop", "top_up_queue", "readouts", "default_budget", "auto_chunk", "new_run_id",
    "ACTIVE_STEPS",
]
