"""Agents answer queries: the simulated oracle, the LLM agent; the human form beside them."""

from .base import STATUSES, Agent, Answers
from .llm import EndpointError, LLMAgent, LLMConfig
from .oracle import OracleAgent, OracleConfig, pair_scales, triplet_margins

__all__ = ["Agent", "Answers", "STATUSES", "EndpointError", "LLMAgent", "LLMConfig", "OracleAgent", "OracleConfig",
           "pair_scales", "triplet_margins"]
