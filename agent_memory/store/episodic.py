"""EpisodicStore: every agent turn, scoped by namespace, versioned, searchable.

All behaviour lives here, once; a :class:`~agent_memory.store.backend.RecordBackend`
only stores rows. Every read is scoped by the caller's namespace *and* every row
coming back is checked against it again, so a backend bug cannot leak episodes
across tenants. Every write validates all its input before touching the backend.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from agent_memory.config import StoreConfig
from agent_memory.embedder import Embedder
from agent_memory.errors import NotFoundError, StoreError, ValidationError
from agent_memory.store.backend import Partition, Record, RecordBackend
from agent_memory.store.filters import METADATA_PREFIX, Condition, compile_filters, scope_conditions
from agent_memory.types import Episode, Namespace, SearchHit, check_id
from agent_memory.validation import check_label, check_metadata, check_role, check_text, check_timestamp

MAX_K = 1000
_HISTORY_SEP = "~v"


@dataclass(frozen=True)
class NewEpisode:
    """An episode to add: what was said, by whom, when, and in which namespace."""

    text: str
    namespace: Namespace
    timestamp: datetime | None = None
    speaker: str = ""
    role: str = "user"
    metadata: Mapping[str, Any] = field(default_factory=dict)


class EpisodicStore:
    """Episodic memory over a record backend (Chroma by default)."""

    def __init__(self, backend: RecordBackend, embedder: Embedder, config: StoreConfig | None = None) -> None:
        self.backend = backend
        self.embedder = embedder
        self.config = config or StoreConfig()
        backend.check_embedder(embedder.name, embedder.dimension)

    @classmethod
    def embedded(cls, path: str | Path, embedder: Embedder, config: StoreConfig | None = None) -> "EpisodicStore":
        from agent_memory.store.chroma import ChromaBackend

        config = config or StoreConfig()
        return cls(ChromaBackend.embedded(path, config.collection_prefix), embedder, config)

    @classmethod
    def server(cls, url: str, embedder: Embedder, config: StoreConfig | None = None) -> "EpisodicStore":
        from agent_memory.store.chroma import ChromaBackend

        config = config or StoreConfig(server_url=url)
        return cls(ChromaBackend.server(url, config.collection_prefix, retries=config.request_retries), embedder, config)

    @classmethod
    def in_memory(cls, embedder: Embedder, config: StoreConfig | None = None) -> "EpisodicStore":
        from agent_memory.store.memory import InMemoryBackend

        return cls(InMemoryBackend(), embedder, config)

    # -- writes -----------------------------------------------------------------------------------
    def add(self, text: str, namespace: Namespace, **fields: Any) -> Episode:
        """Add one episode; ``fields`` are those of :class:`NewEpisode`."""
        return self.add_many([NewEpisode(text, namespace, **fields)])[0]

    def add_many(self, items: Sequence[NewEpisode]) -> list[Episode]:
        """Add episodes in one batch: all are validated first, then written all or none."""
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise ValidationError("items", f"expected a list of NewEpisode, got {type(items).__name__}", "pass a list")
        now = datetime.now(timezone.utc)
        episodes = [self._new_episode(item, now, f"items[{n}]") for n, item in enumerate(items)]
        if not episodes:
            return []
        vectors = self.embedder.embed([e.text for e in episodes])
        by_user: dict[str, list[Record]] = {}
        for e, v in zip(episodes, vectors):
            by_user.setdefault(e.namespace.user_id, []).append(_to_record(e, v))
        written: list[tuple[Partition, list[str]]] = []
        try:
            for user, records in by_user.items():
                self.backend.insert(Partition(user), records)
                written.append((Partition(user), [r.id for r in records]))
        except Exception as exc:
            stranded: list[str] = []
            for part, ids in written:  # all or none across users too
                try:
                    self.backend.remove(part, ids)
                except Exception:  # the backend is failing (e.g. the server is down): say what may remain
                    stranded.extend(ids)
            if stranded:
                raise StoreError(
                    f"could not add the batch ({exc}); undoing the {len(stranded)} episode(s) already written failed "
                    f"too, so they may remain: {', '.join(stranded[:5])}{' ...' if len(stranded) > 5 else ''}; "
                    "delete them with delete(ids, namespace) once the store answers again"
                ) from exc
            raise
        return episodes

    def update(
        self,
        episode_id: str,
        namespace: Namespace,
        *,
        text: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Episode:
        """Replace an episode's text and/or metadata; the old version stays in :meth:`history`.

        A changed episode is pending again, so the next consolidation absorbs the new text.
        """
        if text is None and metadata is None:
            raise ValidationError("text", "nothing to update", "pass text=... and/or metadata=...")
        new_text = None if text is None else check_text(text, max_chars=self.config.max_text_chars)
        new_meta = None if metadata is None else check_metadata(metadata)
        current = self._fetch_current(episode_id, namespace, embeddings=True)
        old = _to_episode(current)
        changed = old.with_changes(
            text=new_text if new_text is not None else old.text,
            metadata=new_meta if new_meta is not None else old.metadata,
            version=old.version + 1,
            absorbed_by=None if new_text is not None and new_text != old.text else old.absorbed_by,
        )
        embedding = self.embedder.embed([changed.text])[0] if new_text is not None else current.embedding
        past = Record(f"{old.id}{_HISTORY_SEP}{old.version}", current.text, dict(current.metadata), current.embedding)
        user = namespace.user_id
        self.backend.upsert(Partition(user, history=True), [past])  # first: a crash here leaves only an extra copy
        self.backend.upsert(Partition(user), [_to_record(changed, embedding)])
        return changed

    def mark_absorbed(
        self,
        episode_ids: Sequence[str],
        namespace: Namespace,
        module_id: str | None,
        *,
        versions: Mapping[str, int] | None = None,
    ) -> list[str]:
        """Record which module consolidated these episodes (``None`` makes them pending again); returns the ids marked.

        With ``versions`` (id -> the version the module learned), an episode deleted or changed since
        is skipped instead: it stays gone, or pending with its new text.
        """
        if module_id is not None:
            check_id("module_id", module_id)
        if versions is None:
            records = [self._fetch_current(i, namespace, embeddings=True) for i in episode_ids]
        else:
            found = self.backend.fetch(Partition(namespace.user_id), list(episode_ids), embeddings=True)
            records = [r for r in found if int(r.metadata.get("version", 1)) == versions.get(r.id)]
        for r in records:
            self._checked(r, namespace)
            r.metadata["absorbed_by"] = module_id or ""
        if records:
            self.backend.upsert(Partition(namespace.user_id), records)
        return [r.id for r in records]

    def delete(self, episode_ids: str | Sequence[str], namespace: Namespace) -> int:
        """Delete episodes and all their past versions. Unknown ids fail before anything is deleted."""
        ids = [episode_ids] if isinstance(episode_ids, str) else list(episode_ids)
        for i in ids:
            self._fetch_current(i, namespace)
        past = [r.id for i in ids for r in self._past_versions(i, namespace)]
        self.backend.remove(Partition(namespace.user_id), ids)
        self.backend.remove(Partition(namespace.user_id, history=True), past)
        return len(ids)

    def delete_user(self, user_id: str) -> int:
        """Delete every episode (and past version) of one user, and nothing of anyone else's."""
        check_id("user_id", user_id)
        count = self.backend.count(Partition(user_id))
        self.backend.drop_user(user_id)
        return count

    # -- reads ------------------------------------------------------------------------------------
    def get(self, episode_id: str, namespace: Namespace) -> Episode:
        """One episode by id; NotFoundError if it is not in this namespace."""
        return _to_episode(self._fetch_current(episode_id, namespace))

    def missing(self, episode_ids: Sequence[str], namespace: Namespace) -> list[str]:
        """The ids among ``episode_ids`` that are not (or no longer) episodes of this namespace."""
        self._conditions(namespace)
        rows = self.backend.fetch(Partition(namespace.user_id), [_check_episode_id(i) for i in episode_ids])
        present = {r.id for r in rows if namespace.contains(_namespace_of(r.metadata))}
        return [i for i in episode_ids if i not in present]

    def find(self, episode_id: str) -> Episode:
        """Operator look-up of an episode by id in any namespace (the CLI's ``get``)."""
        _check_episode_id(episode_id)
        for user in self.backend.users():
            rows = self.backend.fetch(Partition(user), [episode_id])
            if rows:
                return _to_episode(self._checked(rows[0], Namespace(user)))
        raise NotFoundError(f"episode {episode_id!r} does not exist; list ids with `agent-memory list --user U`")

    def history(self, episode_id: str, namespace: Namespace) -> list[Episode]:
        """Every version of an episode, oldest first; the last one is current."""
        current = self._fetch_current(episode_id, namespace)
        versions = [*self._past_versions(episode_id, namespace), current]
        return sorted((_to_episode(r) for r in versions), key=lambda e: e.version)

    def search(
        self,
        query: str,
        namespace: Namespace,
        k: int = 5,
        *,
        filters: Mapping[str, Any] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        vector: Sequence[float] | None = None,
    ) -> list[SearchHit]:
        """The ``k`` episodes in ``namespace`` most similar to ``query``, best first.

        ``vector`` is the query's embedding when the caller already has it (the router does).
        """
        query = check_text(query, max_chars=self.config.max_text_chars, field="query")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ValidationError("k", f"{k!r} is out of range", f"pass an integer from 1 to {MAX_K}")
        conditions = self._conditions(namespace, filters, since, until)
        if vector is None:
            vector = self.embedder.embed([query])[0]
        rows = self.backend.query(Partition(namespace.user_id), vector, conditions, k)
        return [SearchHit(_to_episode(self._checked(r, namespace)), score) for r, score in rows]

    def list(
        self,
        namespace: Namespace,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        filters: Mapping[str, Any] | None = None,
        limit: int | None = None,
    ) -> list[Episode]:
        """Episodes in ``namespace`` (and time range), oldest first."""
        rows = self.backend.scan(Partition(namespace.user_id), self._conditions(namespace, filters, since, until))
        episodes = sorted((_to_episode(self._checked(r, namespace)) for r in rows), key=_chronological)
        return episodes[:limit] if limit is not None else episodes

    def pending(self, namespace: Namespace, *, limit: int | None = None) -> list[Episode]:
        """Episodes not yet absorbed by any module, oldest first."""
        part = Partition(namespace.user_id)
        rows = self.backend.scan(part, self._conditions(namespace) + [Condition("absorbed_by", "$eq", "")])
        episodes = sorted((_to_episode(self._checked(r, namespace)) for r in rows), key=_chronological)
        return episodes[:limit] if limit is not None else episodes

    def namespaces(self) -> list[Namespace]:
        """Every fully specified namespace that holds at least one episode."""
        found = set()
        for user in self.backend.users():
            found |= {_namespace_of(r.metadata) for r in self.backend.scan(Partition(user), [])}
        return sorted(found, key=str)

    def count(self, namespace: Namespace | None = None) -> int:
        """Current episodes in ``namespace``, or in the whole store."""
        if namespace is None:
            return sum(self.backend.count(Partition(u)) for u in self.backend.users())
        conds = self._conditions(namespace)
        if not conds:
            return self.backend.count(Partition(namespace.user_id))
        return len([self._checked(r, namespace) for r in self.backend.scan(Partition(namespace.user_id), conds)])

    # -- internals --------------------------------------------------------------------------------
    def _new_episode(self, item: Any, now: datetime, where: str) -> Episode:
        if not isinstance(item, NewEpisode):
            raise ValidationError(where, f"expected NewEpisode, got {type(item).__name__}", "wrap it in NewEpisode(...)")
        if not isinstance(item.namespace, Namespace):
            raise ValidationError(
                f"{where}.namespace", f"expected Namespace, got {type(item.namespace).__name__}",
                "pass Namespace(user_id, agent_id, session_id)",
            )
        return Episode(
            id=f"ep_{uuid.uuid4().hex}",
            text=check_text(item.text, max_chars=self.config.max_text_chars),
            namespace=item.namespace.for_write(),
            timestamp=now if item.timestamp is None else check_timestamp(item.timestamp),
            speaker=check_label(item.speaker, "speaker"),
            role=check_role(item.role),
            metadata=check_metadata(item.metadata),
            created_at=now,
        )

    def _conditions(self, namespace: Namespace, filters=None, since=None, until=None) -> list[Condition]:
        if not isinstance(namespace, Namespace):
            raise ValidationError(
                "namespace", f"expected Namespace, got {type(namespace).__name__}", "pass Namespace(user_id, ...)"
            )
        return scope_conditions(namespace, since, until) + compile_filters(filters)

    def _fetch_current(self, episode_id: str, namespace: Namespace, *, embeddings: bool = False) -> Record:
        self._conditions(namespace)
        rows = self.backend.fetch(Partition(namespace.user_id), [_check_episode_id(episode_id)], embeddings=embeddings)
        if not rows or not namespace.contains(_namespace_of(rows[0].metadata)):
            raise NotFoundError(f"episode {episode_id!r} is not in namespace {namespace}; check the id and namespace")
        return rows[0]

    def _past_versions(self, episode_id: str, namespace: Namespace) -> list[Record]:
        part = Partition(namespace.user_id, history=True)
        return [self._checked(r, namespace) for r in self.backend.scan(part, [Condition("episode_id", "$eq", episode_id)])]

    @staticmethod
    def _checked(record: Record, namespace: Namespace) -> Record:
        """Defence in depth: refuse any row outside the caller's namespace."""
        if not namespace.contains(_namespace_of(record.metadata)):
            raise StoreError(f"backend returned episode {record.id} outside namespace {namespace}; refusing it")
        return record


def _check_episode_id(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("ep_") or not value[3:].isalnum() or len(value) > 64:
        raise ValidationError("episode_id", f"{value!r} is not an episode id", "pass an id returned by add(), like ep_...")
    return value


def _chronological(e: Episode) -> tuple:
    return (e.timestamp.timestamp(), e.created_at.timestamp() if e.created_at else 0.0, e.id)


def _namespace_of(meta: Mapping[str, Any]) -> Namespace:
    return Namespace(meta["user_id"], meta["agent_id"], meta["session_id"])


def _to_record(e: Episode, embedding: Sequence[float] | None) -> Record:
    meta: dict[str, Any] = {
        "episode_id": e.id,
        "user_id": e.namespace.user_id,
        "agent_id": e.namespace.agent_id,
        "session_id": e.namespace.session_id,
        "speaker": e.speaker,
        "role": e.role,
        "ts": e.timestamp.timestamp(),
        "ts_iso": e.timestamp.isoformat(),
        "created": (e.created_at or e.timestamp).timestamp(),
        "absorbed_by": e.absorbed_by or "",
        "version": e.version,
    }
    meta.update({METADATA_PREFIX + k: v for k, v in e.metadata.items()})
    return Record(e.id, e.text, meta, list(embedding) if embedding is not None else None)


def _to_episode(r: Record) -> Episode:
    m = r.metadata
    return Episode(
        id=m["episode_id"],
        text=r.text,
        namespace=_namespace_of(m),
        timestamp=datetime.fromisoformat(m["ts_iso"]),
        speaker=m.get("speaker", ""),
        role=m.get("role", "user"),
        metadata={k[len(METADATA_PREFIX):]: v for k, v in m.items() if k.startswith(METADATA_PREFIX)},
        absorbed_by=m.get("absorbed_by") or None,
        version=int(m.get("version", 1)),
        created_at=datetime.fromtimestamp(m["created"], timezone.utc),
    )
