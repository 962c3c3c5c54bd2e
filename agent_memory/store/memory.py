"""In-memory record backend: the store's twin for tests and throwaway agents."""

from __future__ import annotations

import threading
from typing import Sequence

from agent_memory.errors import StoreError
from agent_memory.store.backend import Partition, Record, nearest
from agent_memory.store.filters import Condition, matches_all


class InMemoryBackend:
    """Holds records in dicts, one per partition; exact cosine search with numpy. Thread-safe."""

    kind = "in-memory"

    def __init__(self) -> None:
        self._parts: dict[Partition, dict[str, Record]] = {}
        self._lock = threading.RLock()
        self._embedder: tuple[str, int] | None = None

    def insert(self, part: Partition, records: Sequence[Record]) -> None:
        with self._lock:
            rows = self._parts.get(part, {})
            clash = [r.id for r in records if r.id in rows]
            if clash:
                raise StoreError(f"record ids already exist: {clash[:3]}")
            self.upsert(part, records)

    def upsert(self, part: Partition, records: Sequence[Record]) -> None:
        with self._lock:
            rows = self._parts.setdefault(part, {})
            for r in records:
                rows[r.id] = Record(r.id, r.text, dict(r.metadata), list(r.embedding or []))

    def fetch(self, part: Partition, ids: Sequence[str], *, embeddings: bool = False) -> list[Record]:
        with self._lock:
            rows = self._parts.get(part, {})
            return [_copy(rows[i], embeddings) for i in ids if i in rows]

    def scan(self, part: Partition, conditions: Sequence[Condition], *, limit: int | None = None) -> list[Record]:
        with self._lock:
            rows = [_copy(r, False) for r in self._matching(part, conditions)]
        return rows[:limit] if limit is not None else rows

    def query(
        self, part: Partition, embedding: Sequence[float], conditions: Sequence[Condition], k: int
    ) -> list[tuple[Record, float]]:
        with self._lock:
            rows = self._matching(part, conditions)
        return [(_copy(r, False), score) for r, score in nearest(rows, embedding, k)]

    def remove(self, part: Partition, ids: Sequence[str]) -> None:
        with self._lock:
            rows = self._parts.get(part, {})
            for i in ids:
                rows.pop(i, None)

    def count(self, part: Partition) -> int:
        return len(self._parts.get(part, {}))

    def users(self) -> list[str]:
        with self._lock:
            return sorted({p.user_id for p, rows in self._parts.items() if not p.history and rows})

    def drop_user(self, user_id: str) -> None:
        with self._lock:
            for history in (False, True):
                self._parts.pop(Partition(user_id, history), None)

    def check_embedder(self, name: str, dimension: int) -> None:
        with self._lock:
            if self._embedder is None:
                self._embedder = (name, dimension)
            elif self._embedder != (name, dimension):
                raise StoreError(f"store holds {self._embedder} embeddings, not {(name, dimension)}")

    def _matching(self, part: Partition, conditions: Sequence[Condition]) -> list[Record]:
        conds = list(conditions)
        return [r for r in self._parts.get(part, {}).values() if matches_all(conds, r.metadata)]


def _copy(r: Record, embeddings: bool) -> Record:
    return Record(r.id, r.text, dict(r.metadata), list(r.embedding) if embeddings and r.embedding else None)
