"""Agents answer queries: the simulated oracle here; the LLM and human agents beside it."""

from .base import STATUSES, Agent, Answers
from .oracle import OracleAgent, OracleConfig, pair_scales, triplet_margins

__all__ = ["Agent", "Answers", "STATUSES", "OracleAgent", "OracleConfig", "pair_scales", "triplet_margins"]
