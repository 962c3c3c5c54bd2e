"""agent_memory: the memory layer for LLM agents.

Episodic memory in Chroma, scoped by user / agent / session; answers from the
backbone LLM with retrieved episodes in the prompt.
"""

from agent_memory.config import BackboneConfig, MemoryConfig, StoreConfig
from agent_memory.errors import AgentMemoryError, NotFoundError, StoreError, ValidationError
from agent_memory.memory import AgentMemory, Answer
from agent_memory.store import EpisodicStore, NewEpisode
from agent_memory.types import Episode, Namespace, SearchHit

__version__ = "0.1.0"

__all__ = [
    "AgentMemory",
    "AgentMemoryError",
    "Answer",
    "BackboneConfig",
    "Episode",
    "EpisodicStore",
    "MemoryConfig",
    "Namespace",
    "NewEpisode",
    "NotFoundError",
    "SearchHit",
    "StoreConfig",
    "StoreError",
    "ValidationError",
]
