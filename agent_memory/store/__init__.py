"""Episodic memory: the store, its record backends and its filter language."""

from agent_memory.store.backend import Record, RecordBackend
from agent_memory.store.episodic import EpisodicStore, NewEpisode

__all__ = ["EpisodicStore", "NewEpisode", "Record", "RecordBackend"]
