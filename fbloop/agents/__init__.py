"""Agents answer queries: the simulated oracle, the LLM agent; the human form beside them."""

from ..records import STATUSES, Answers
from .base import Agent
from .llm import EndpointError, LLMAgent, LLMConfig
from .oracle import OracleAgent, OracleConfig, pair_scales, triplet_margins

__all__ = ["Agent", "Answers", "STATUSES", "EndpointError", "LLMAgent", "LLMConfig", "OracleAgent", "OracleConfig",
           "pair_scales", "triplet_margins"]
