"""The I/O seam under the episodic store: flat records in partitions.

A partition holds one user's live episodes or one user's past versions, so a
user's data is physically apart from every other user's (in Chroma: its own
collections), and a user-wide search needs no filter at all. A backend knows
nothing about namespaces, versions or validation; it stores ``Record`` rows and
evaluates compiled :class:`~agent_memory.store.filters.Condition` lists.
:class:`~agent_memory.store.episodic.EpisodicStore` holds all the logic, so every
backend (Chroma embedded, Chroma server, in-memory) behaves the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from agent_memory.store.filters import Condition


@dataclass(frozen=True)
class Partition:
    """One user's live episodes (``history=False``) or their past versions."""

    user_id: str
    history: bool = False


@dataclass
class Record:
    """One stored row: id, document text, flat metadata and (optionally) its embedding."""

    id: str
    text: str
    metadata: dict[str, Any]
    embedding: list[float] | None = field(default=None, repr=False)


class RecordBackend(Protocol):
    """What a storage engine must offer the episodic store.

    Reads of a partition that was never written return nothing (and create nothing).
    """

    kind: str
    """Short label for info and benchmarks, e.g. ``chroma-embedded``."""

    def insert(self, part: Partition, records: Sequence[Record]) -> None:
        """Add new records, all or none. Ids are fresh; embeddings are set."""

    def upsert(self, part: Partition, records: Sequence[Record]) -> None:
        """Write records whole (text, metadata, embedding), replacing any with the same id."""

    def fetch(self, part: Partition, ids: Sequence[str], *, embeddings: bool = False) -> list[Record]:
        """The records that exist among ``ids`` (missing ids are skipped)."""

    def scan(self, part: Partition, conditions: Sequence[Condition], *, limit: int | None = None) -> list[Record]:
        """Every record matching all conditions, in no particular order."""

    def query(
        self, part: Partition, embedding: Sequence[float], conditions: Sequence[Condition], k: int
    ) -> list[tuple[Record, float]]:
        """Up to ``k`` records matching the conditions, nearest first, with cosine similarity."""

    def remove(self, part: Partition, ids: Sequence[str]) -> None:
        """Delete records by id; missing ids are ignored."""

    def count(self, part: Partition) -> int:
        """Number of records in the partition."""

    def users(self) -> list[str]:
        """Every user id that has a live partition."""

    def drop_user(self, user_id: str) -> None:
        """Delete both of a user's partitions (and nothing else)."""

    def check_embedder(self, name: str, dimension: int) -> None:
        """Raise StoreError if existing data was written with another embedder; remember it for new partitions."""


def nearest(records: Sequence[Record], embedding: Sequence[float], k: int) -> list[tuple[Record, float]]:
    """Exact search: the ``k`` records (of those with an embedding) most cosine-similar to ``embedding``.

    Records come back as given (embedding included), nearest first, with their similarity.
    """
    rows = [r for r in records if r.embedding is not None and len(r.embedding)]
    if not rows or k <= 0:
        return []
    matrix = np.asarray([r.embedding for r in rows], dtype=np.float32)
    query = np.asarray(embedding, dtype=np.float32)
    scores = (matrix @ query) / np.maximum(np.linalg.norm(matrix, axis=1) * np.linalg.norm(query), 1e-12)
    order = np.argsort(-scores, kind="stable")[:k]
    return [(rows[i], float(scores[i])) for i in order]
