"""Chroma record backend, embedded (``PersistentClient``) or server (``HttpClient``).

The only module that imports chromadb. Telemetry is always off. Vectors come from
our own embedder, so Chroma's downloading default embedding function is never used.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar
from urllib.parse import urlparse

from agent_memory.errors import StoreError
from agent_memory.store.backend import Partition, Record, nearest
from agent_memory.store.filters import Condition, matches_all, to_chroma_where

T = TypeVar("T")
_BACKOFF_S = 0.2


def _settings():
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False)


def _transient_errors() -> tuple[type[BaseException], ...]:
    import httpx

    return (httpx.TransportError, ConnectionError, TimeoutError)


class ChromaBackend:
    """Each user's live episodes and past versions in two Chroma collections of their own (cosine space).

    Collection names are ``{prefix}.{ep|hist}.{user}.{hash}``; their metadata records the
    user id and the embedder, so a store opened with another embedder fails loudly.
    """

    def __init__(self, client: Any, prefix: str, *, kind: str = "chroma", retries: int = 0) -> None:
        self._client = client
        self.prefix = prefix
        self.kind = kind
        self._retries = retries
        self._cols: dict[Partition, Any] = {}
        self._embedder: tuple[str, int] | None = None
        self._lock = threading.Lock()
        try:
            self._max_batch = int(client.get_max_batch_size())
        except Exception:  # older servers lack the endpoint; keep a conservative default
            self._max_batch = 5000

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def embedded(cls, path: str | Path, prefix: str) -> "ChromaBackend":
        """Collections in a local folder (created if missing)."""
        import chromadb

        Path(path).mkdir(parents=True, exist_ok=True)
        try:
            client = chromadb.PersistentClient(path=str(path), settings=_settings())
        except Exception as exc:  # chromadb raises assorted types for a bad folder
            raise StoreError(f"cannot open the Chroma store at {path}: {exc}; check the folder is writable") from exc
        return cls(client, prefix, kind="chroma-embedded", retries=0)

    @classmethod
    def server(cls, url: str, prefix: str, *, retries: int = 3) -> "ChromaBackend":
        """Collections on a Chroma server started with ``chroma run --host 127.0.0.1 --port N``."""
        import chromadb

        parsed = urlparse(url)
        if not parsed.hostname or not parsed.port:
            raise StoreError(f"server_url {url!r} needs a host and a port, e.g. http://127.0.0.1:8000")
        def connect():
            try:
                return chromadb.HttpClient(
                    host=parsed.hostname, port=parsed.port, ssl=parsed.scheme == "https", settings=_settings()
                )
            except ValueError as exc:  # chromadb reports a refused connection as ValueError
                raise ConnectionError(str(exc)) from exc

        client = _retry(connect, retries, f"connect to the Chroma server at {url}")
        return cls(client, prefix, kind="chroma-server", retries=retries)

    # -- RecordBackend ----------------------------------------------------------------------------
    def insert(self, part: Partition, records: Sequence[Record]) -> None:
        col = self._collection(part, create=True)
        done: list[str] = []
        try:
            for chunk in self._chunks(records):
                self._call(lambda: col.add(**_columns(chunk)), "add episodes")
                done.extend(r.id for r in chunk)
        except StoreError:
            if done:  # all or nothing: undo the chunks that went in
                self._call(lambda: col.delete(ids=done), "roll back a partial add")
            raise

    def upsert(self, part: Partition, records: Sequence[Record]) -> None:
        col = self._collection(part, create=True)
        for chunk in self._chunks(records):
            self._call(lambda: col.upsert(**_columns(chunk)), "write episodes")

    def fetch(self, part: Partition, ids: Sequence[str], *, embeddings: bool = False) -> list[Record]:
        col = self._collection(part)
        if col is None or not ids:
            return []
        include = ["documents", "metadatas"] + (["embeddings"] if embeddings else [])
        return _records(self._call(lambda: col.get(ids=list(ids), include=include), "get episodes"), embeddings)

    def scan(self, part: Partition, conditions: Sequence[Condition], *, limit: int | None = None) -> list[Record]:
        col = self._collection(part)
        if col is None:
            return []
        native, local = _split(conditions)
        where = to_chroma_where(native)
        got = self._call(lambda: col.get(where=where, limit=None if local else limit, include=["documents", "metadatas"]),
                         "list episodes")
        rows = [r for r in _records(got, False) if matches_all(local, r.metadata)]
        return rows[:limit] if limit is not None else rows

    def query(
        self, part: Partition, embedding: Sequence[float], conditions: Sequence[Condition], k: int
    ) -> list[tuple[Record, float]]:
        col = self._collection(part)
        if col is None:
            return []
        native, local = _split(conditions)
        ids = None
        if local:  # find the matching ids here, then search among them only
            ids = [r.id for r in self.scan(part, conditions)]
            if not ids:
                return []
            native, k = [], min(k, len(ids))
        where = to_chroma_where(native)
        got = self._call(
            lambda: col.query(
                query_embeddings=[list(embedding)], n_results=k, where=where, ids=ids,
                include=["documents", "metadatas", "distances"],
            ),
            "search episodes",
        )
        rows = zip(got["ids"][0], got["documents"][0], got["metadatas"][0], got["distances"][0])
        hits = [(Record(i, doc, dict(meta)), 1.0 - float(dist)) for i, doc, meta, dist in rows]
        return hits if len(hits) >= k else self._exact_if_short(part, col, embedding, where, ids, k, hits)

    def _exact_if_short(self, part: Partition, col: Any, embedding: Sequence[float], where: Any,
                        ids: list[str] | None, k: int, hits: list[tuple[Record, float]]) -> list[tuple[Record, float]]:
        """Chroma's filtered HNSW search is approximate and can return fewer than ``k`` although more
        records match (the isolation harness saw 19 of 20 once in thousands of searches). Then
        rank the matching records exactly, as the in-memory backend always does."""
        matching = ids if ids is not None else (  # ids: the local-filter path already listed the matches
            self._call(lambda: col.get(where=where, include=[]), "list episode ids")["ids"])
        if len(matching) <= len(hits):
            return hits
        exact = nearest(self.fetch(part, matching, embeddings=True), embedding, k)
        return [(Record(r.id, r.text, r.metadata), score) for r, score in exact] if len(exact) > len(hits) else hits

    def remove(self, part: Partition, ids: Sequence[str]) -> None:
        col = self._collection(part)
        if col is not None and ids:
            self._call(lambda: col.delete(ids=list(ids)), "delete episodes")

    def count(self, part: Partition) -> int:
        col = self._collection(part)
        return 0 if col is None else int(self._call(col.count, "count episodes"))

    def users(self) -> list[str]:
        found = []
        for col in self._call(self._client.list_collections, "list collections"):
            meta = col.metadata or {}
            if col.name.startswith(f"{self.prefix}.ep.") and "user_id" in meta:
                found.append(meta["user_id"])
        return sorted(found)

    def drop_user(self, user_id: str) -> None:
        for history in (False, True):
            part = Partition(user_id, history)
            with self._lock:
                self._cols.pop(part, None)
            try:
                self._call(lambda: self._client.delete_collection(self._name(part)), "delete a user's collection")
            except StoreError as exc:
                if "does not exist" not in str(exc):
                    raise

    def check_embedder(self, name: str, dimension: int) -> None:
        self._embedder = (name, dimension)
        for col in self._call(self._client.list_collections, "list collections"):
            if col.name.startswith(f"{self.prefix}."):
                self._check_collection(col)
                break  # every collection is checked again when first opened

    # -- internals --------------------------------------------------------------------------------
    def _name(self, part: Partition) -> str:
        kind = "hist" if part.history else "ep"
        safe = re.sub(r"[^A-Za-z0-9_-]", "-", part.user_id)[:48]
        digest = hashlib.sha256(part.user_id.encode()).hexdigest()[:12]
        return f"{self.prefix}.{kind}.{safe}.{digest}"

    def _collection(self, part: Partition, create: bool = False) -> Any:
        with self._lock:
            col = self._cols.get(part)
        if col is not None:
            return col
        name = self._name(part)
        if create:
            name_, dim = self._embedder or ("unknown", 0)
            meta = {"user_id": part.user_id, "history": part.history, "embedder": name_, "dimension": dim}
            col = self._call(
                lambda: self._client.get_or_create_collection(
                    name, embedding_function=None, metadata=meta, configuration={"hnsw": {"space": "cosine"}}
                ),
                f"open collection {name!r}",
            )
        else:
            try:
                col = self._call(lambda: self._client.get_collection(name, embedding_function=None), "open collection")
            except StoreError as exc:
                if "does not exist" in str(exc):
                    return None
                raise
        self._check_collection(col)
        with self._lock:
            self._cols[part] = col
        return col

    def _check_collection(self, col: Any) -> None:
        meta = col.metadata or {}
        if self._embedder and (meta.get("embedder"), meta.get("dimension")) != self._embedder:
            raise StoreError(
                f"collection {col.name!r} holds {meta.get('embedder')} embeddings (dimension "
                f"{meta.get('dimension')}), not {self._embedder[0]} (dimension {self._embedder[1]}); "
                "use the same embedder or another home / collection prefix"
            )

    def _chunks(self, records: Sequence[Record]):
        for start in range(0, len(records), self._max_batch):
            yield records[start : start + self._max_batch]

    def _call(self, fn: Callable[[], T], what: str) -> T:
        return _retry(fn, self._retries, what)


def _retry(fn: Callable[[], T], retries: int, what: str) -> T:
    """Run ``fn``; retry transient network errors with exponential backoff; wrap failures in StoreError."""
    transient = _transient_errors()
    for attempt in range(retries + 1):
        try:
            return fn()
        except transient as exc:
            if attempt == retries:
                raise StoreError(
                    f"could not {what}: the Chroma server did not answer after {retries + 1} tries ({exc}); "
                    "check that `chroma run` is up"
                ) from exc
            time.sleep(_BACKOFF_S * 2**attempt)
        except (ValueError, TypeError, RuntimeError) as exc:  # chromadb's errors derive from these
            raise StoreError(f"could not {what}: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("chromadb"):
                raise StoreError(f"could not {what}: {exc}") from exc
            raise
    raise AssertionError("unreachable")


def _split(conditions: Sequence[Condition]) -> tuple[list[Condition], list[Condition]]:
    """(conditions Chroma evaluates right, conditions evaluated here).

    Chroma (1.5) truncates a float operand compared with an int-valued field: ``n == 20.5`` matches
    20, ``n >= 20.5`` matches 20, ``n > -0.5`` misses 0. Conditions with a non-integral float are
    therefore evaluated in Python (:meth:`Condition.matches`), as the in-memory backend does.
    """
    native, local = [], []
    for c in conditions:
        values = c.value if isinstance(c.value, tuple) else (c.value,)
        exact = not any(isinstance(v, float) and not v.is_integer() for v in values)
        (native if exact else local).append(c)
    return native, local


def _columns(records: Sequence[Record]) -> dict[str, list]:
    return {
        "ids": [r.id for r in records],
        "documents": [r.text for r in records],
        "metadatas": [r.metadata for r in records],
        "embeddings": [r.embedding for r in records],
    }


def _records(got: dict[str, Any], embeddings: bool) -> list[Record]:
    vectors = got.get("embeddings") if embeddings else None
    return [
        Record(i, doc, dict(meta), [float(x) for x in vectors[n]] if vectors is not None else None)
        for n, (i, doc, meta) in enumerate(zip(got["ids"], got["documents"], got["metadatas"]))
    ]
