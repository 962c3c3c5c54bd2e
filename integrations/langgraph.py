"""LangGraph integration: :class:`AgentMemoryStore`, a ``BaseStore`` whose items are episodes.

``graph.compile(store=AgentMemoryStore(memory))`` gives every node LangGraph's long-term store API
(``put / get / search / delete / list_namespaces``, sync and async) on top of episodic memory, so what
a graph stores is also searchable by :meth:`AgentMemory.search`, answerable by :meth:`AgentMemory.answer`
and consolidated into modules like any other episode.

How a LangGraph item maps onto an episode
-----------------------------------------
* **User.** ``AgentMemoryStore(memory, user_id="maria")`` binds the store to one user: every item lives
  in maria's partition whatever its namespace tuple, and nothing of any other user can be read.
  Unbound (the default), the user is the namespace label at ``user_index`` (0: ``("maria", "memories")``;
  1 for LangGraph's common ``("memories", "maria")``); it must be a valid user id.
* **Namespace** ``user/agent_id/session_id`` (defaults ``langgraph/store``), so store items never mix
  with a conversation session's recent turns.
* **Text** (what is embedded and what answers quote): the value's index fields, joined by newlines.
  ``index={"fields": ["text"]}`` as in LangGraph (default ``["$"]``: the whole value as JSON); a put's
  ``index=[...]`` overrides them. ``embed`` and ``dims`` are not taken: the memory's embedder embeds.
  An item put with ``index=False`` (or whose fields are missing) still needs text, so its JSON becomes the
  episode text, but it is not ranked by ``search(query=...)``: it comes after ranked items, without score,
  as in LangGraph's ``InMemoryStore``.
* **Metadata** (all under the prefix ``lg_``): ``lg_item`` (true), ``lg_ns`` (the labels joined by ``.``;
  labels cannot contain ``.``), ``lg_p1 .. lg_pN`` (each prefix, so a prefix search is one equality
  clause in Chroma), ``lg_key``, ``lg_value`` (the value as JSON), ``lg_updated`` (ISO time),
  ``lg_indexed``. Namespaces are at most :data:`MAX_DEPTH` labels deep.
* **Times.** ``created_at`` is the episode's timestamp (the first put), ``updated_at`` the last put's. A put to an
  existing key updates the episode in place (its old version stays in :meth:`AgentMemory.history`; a
  changed text is pending consolidation again); a put of ``None`` deletes it and its history.

Search semantics follow ``InMemoryStore``: ``filter`` matches top-level value fields (nested dicts
compare field by field) with ``$eq $ne $gt $gte $lt $lte``; range operators compare numbers with numbers
and strings with strings (ISO dates), anything else does not match. Without ``query`` results are the
most recently updated first. With a filter, a query ranks the best ``1000`` (``MAX_K``) items of the
prefix per user and filters those. Ops in one batch run in order, one batch at a time per store (a
lock; writes from several processes to the same key can still race). No TTL support.
"""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    get_text_at_path,
    validate_op_namespace,
)

from agent_memory.errors import InvalidNamespaceError, ValidationError
from agent_memory.memory import AgentMemory
from agent_memory.store.episodic import MAX_K
from agent_memory.types import Episode, Namespace, check_id

__all__ = ["AgentMemoryStore", "MAX_DEPTH"]

MAX_DEPTH = 16
"""Deepest namespace tuple the store takes (one metadata key per prefix)."""
_RANGE = {"$gt": lambda a, b: a > b, "$gte": lambda a, b: a >= b, "$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b}


class AgentMemoryStore(BaseStore):
    """LangGraph's ``BaseStore`` over an :class:`AgentMemory` (see the module docstring for the mapping)."""

    supports_ttl = False

    def __init__(
        self,
        memory: AgentMemory,
        *,
        user_id: str | None = None,
        user_index: int = 0,
        agent_id: str = "langgraph",
        session_id: str = "store",
        index: IndexConfig | None = None,
        role: str = "observation",
    ) -> None:
        self.memory = memory
        self.user_id = None if user_id is None else check_id("user_id", user_id)
        if isinstance(user_index, bool) or not isinstance(user_index, int) or not 0 <= user_index < MAX_DEPTH:
            raise ValidationError("user_index", f"{user_index!r} is out of range", f"pass 0 to {MAX_DEPTH - 1}")
        self.user_index = user_index
        self.agent_id = check_id("agent_id", agent_id)
        self.session_id = check_id("session_id", session_id)
        self.role = role
        self.index_config = _check_index(index, memory.store.embedder.dimension)
        self.fields = list((self.index_config or {}).get("fields") or ["$"])
        self._lock = threading.RLock()

    # -- BaseStore ---------------------------------------------------------------------------------
    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run the ops in order (one batch at a time) and return one result per op."""
        ops = list(ops)
        for op in ops:
            validate_op_namespace(op)
        with self._lock:
            return [self._run(op) for op in ops]

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """:meth:`batch` in a worker thread."""
        return await asyncio.to_thread(self.batch, list(ops))

    def _run(self, op: Op) -> Result:
        if isinstance(op, GetOp):
            return self._get(op)
        if isinstance(op, PutOp):
            return self._put(op)
        if isinstance(op, SearchOp):
            return self._search(op)
        if isinstance(op, ListNamespacesOp):
            return self._list_namespaces(op)
        raise ValidationError("op", f"unknown operation {type(op).__name__}", "pass GetOp, PutOp, SearchOp or ListNamespacesOp")

    # -- ops -----------------------------------------------------------------------------------------
    def _get(self, op: GetOp) -> Item | None:
        user = self._user_or_none(op.namespace)
        if user is None:
            return None
        found = self._find(user, op.namespace, op.key)
        return _item(found[0]) if found else None

    def _put(self, op: PutOp) -> None:
        if op.ttl is not None:
            raise NotImplementedError("AgentMemoryStore does not expire items; put with ttl=None")
        user = self._user_for_write(op.namespace)
        found = self._find(user, op.namespace, op.key)
        scope = self._scope(user)
        if op.value is None:
            if found:
                self.memory.delete([e.id for e in found], scope)
            return None
        value = _to_json(op.value)
        text, indexed = self._text(op.value, op.index)
        now = datetime.now(timezone.utc)
        meta = {
            "lg_item": True, "lg_ns": ".".join(op.namespace), "lg_key": op.key, "lg_value": value,
            "lg_updated": now.isoformat(), "lg_indexed": indexed,
            **{f"lg_p{n}": ".".join(op.namespace[:n]) for n in range(1, len(op.namespace) + 1)},
        }
        if not found:
            self.memory.add(text, scope, role=self.role, timestamp=now, metadata=meta)
            return None
        current, extra = found[0], found[1:]
        self.memory.update(current.id, scope, text=None if text == current.text else text, metadata=meta)
        if extra:  # only if two writers raced on a new key: keep the one just updated
            self.memory.delete([e.id for e in extra], scope)
        return None

    def _search(self, op: SearchOp) -> list[SearchItem]:
        want = op.offset + op.limit
        if op.limit <= 0 or want <= 0:
            return []
        where = {"lg_item": True, **_prefix_filter(op.namespace_prefix)}
        users = self._users(op.namespace_prefix)
        keep = (lambda e: _matches(_value(e), op.filter)) if op.filter else (lambda e: True)
        results: list[SearchItem] = []
        if op.query:
            k = MAX_K if op.filter else min(MAX_K, want)
            hits = [h for user in users
                    for h in self.memory.search(op.query, self._scope(user), k, filters={**where, "lg_indexed": True})]
            hits.sort(key=lambda h: -h.score)
            results = [_search_item(h.episode, h.score) for h in hits if keep(h.episode)]
            where["lg_indexed"] = False  # unranked items fill up the page, as in InMemoryStore
        if len(results) < want:
            listed = [e for user in users for e in self.memory.list(self._scope(user), filters=where) if keep(e)]
            listed.sort(key=lambda e: (e.metadata["lg_updated"], e.id), reverse=True)
            results += [_search_item(e, None) for e in listed]
        return results[op.offset:want]

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        conditions = op.match_conditions or ()
        users = self._users(next((c.path for c in conditions if c.match_type == "prefix"), ()))
        found = {tuple(e.metadata["lg_ns"].split("."))
                 for user in users for e in self.memory.list(self._scope(user), filters={"lg_item": True})}
        found = {ns for ns in found if all(_does_match(c, ns) for c in conditions)}
        if op.max_depth is not None:
            found = {ns[: op.max_depth] for ns in found}
        return sorted(found)[op.offset: op.offset + op.limit]

    # -- mapping -------------------------------------------------------------------------------------
    def _scope(self, user: str) -> Namespace:
        return Namespace(user, self.agent_id, self.session_id)

    def _find(self, user: str, namespace: tuple[str, ...], key: str) -> list[Episode]:
        """The episode(s) holding ``namespace`` / ``key``, the last put first."""
        where = {"lg_item": True, "lg_ns": ".".join(namespace), "lg_key": key}
        found = self.memory.list(self._scope(user), filters=where)
        return sorted(found, key=lambda e: (e.metadata["lg_updated"], e.version), reverse=True)

    def _user_for_write(self, namespace: tuple[str, ...]) -> str:
        if not namespace or len(namespace) > MAX_DEPTH:
            raise InvalidNamespaceError("namespace", f"{namespace!r} has {len(namespace)} labels",
                                        f"use 1 to {MAX_DEPTH} labels")
        if self.user_id is not None:
            return self.user_id
        if len(namespace) <= self.user_index:
            raise InvalidNamespaceError(
                "namespace", f"{namespace!r} has no user label at position {self.user_index}",
                "put the user id there, or bind the store with AgentMemoryStore(memory, user_id=...)")
        return check_id(f"namespace[{self.user_index}]", namespace[self.user_index])

    def _user_or_none(self, namespace: tuple[str, ...]) -> str | None:
        """The user a read addresses, or ``None`` when nothing can be stored there."""
        try:
            return self._user_for_write(namespace)
        except InvalidNamespaceError:
            return None

    def _users(self, prefix: tuple[str, ...]) -> list[str]:
        """Users a read under ``prefix`` (which may hold ``*`` wildcards) can reach."""
        if self.user_id is not None:
            return [self.user_id]
        if len(prefix) > self.user_index and prefix[self.user_index] != "*":
            user = self._user_or_none(tuple(prefix[: self.user_index + 1]))
            return [user] if user else []
        return sorted({n.user_id for n in self.memory.store.namespaces()
                       if (n.agent_id, n.session_id) == (self.agent_id, self.session_id)})

    def _text(self, value: Mapping[str, Any], index: Any) -> tuple[str, bool]:
        """The episode text of a value and whether it is ranked by semantic search."""
        if index is not False:
            paths = self.fields if index is None else list(index)
            texts = [t for path in paths for t in get_text_at_path(dict(value), path) if t.strip()]
            if texts:
                return "\n".join(texts), True
        return json.dumps(value, sort_keys=True, ensure_ascii=False), False


def _check_index(index: IndexConfig | None, dimension: int) -> IndexConfig | None:
    if index is None:
        return None
    if index.get("embed") is not None:
        raise ValidationError("index.embed", "the store embeds with the memory's embedder",
                              "leave embed out (choose the embedder with AgentMemory.open(..., embedder=...))")
    if index.get("dims") not in (None, dimension):
        raise ValidationError("index.dims", f"{index['dims']} differs from the embedder's {dimension}",
                              f"leave dims out or pass {dimension}")
    return {**index, "dims": dimension}


def _to_json(value: Any) -> str:
    if not isinstance(value, Mapping):
        raise ValidationError("value", f"expected a dict, got {type(value).__name__}", "put a dict of JSON values")
    try:
        return json.dumps(dict(value), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError("value", f"is not JSON-serialisable ({exc})",
                              "store dicts, lists, strings, finite numbers, booleans and None only") from None


def _value(e: Episode) -> dict[str, Any]:
    return json.loads(e.metadata["lg_value"])


def _item(e: Episode) -> Item:
    return Item(**_fields(e))


def _search_item(e: Episode, score: float | None) -> SearchItem:
    return SearchItem(**_fields(e), score=score)


def _fields(e: Episode) -> dict[str, Any]:
    return dict(namespace=tuple(e.metadata["lg_ns"].split(".")), key=e.metadata["lg_key"], value=_value(e),
                created_at=e.timestamp, updated_at=datetime.fromisoformat(e.metadata["lg_updated"]))


def _prefix_filter(prefix: tuple[str, ...]) -> dict[str, str]:
    if not prefix:
        return {}
    if len(prefix) > MAX_DEPTH:
        return {"lg_ns": "\x01"}  # deeper than anything stored: matches nothing
    return {f"lg_p{len(prefix)}": ".".join(prefix)}


def _matches(value: Any, flt: Mapping[str, Any]) -> bool:
    return isinstance(value, dict) and all(_compare(value.get(k), f) for k, f in flt.items())


def _compare(item: Any, flt: Any) -> bool:
    if isinstance(flt, Mapping):
        if any(isinstance(k, str) and k.startswith("$") for k in flt):
            return all(_apply(item, op, arg) for op, arg in flt.items())
        return isinstance(item, dict) and all(_compare(item.get(k), v) for k, v in flt.items())
    return item == flt


def _apply(item: Any, op: str, arg: Any) -> bool:
    if op == "$eq":
        return item == arg
    if op == "$ne":
        return item != arg
    if op not in _RANGE:
        raise ValidationError("filter", f"unknown operator {op!r}", "use $eq $ne $gt $gte $lt $lte")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (item, arg))
    strings = isinstance(item, str) and isinstance(arg, str)
    return (numbers or strings) and _RANGE[op](item, arg)


def _does_match(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    part = namespace[: len(path)] if condition.match_type == "prefix" else namespace[len(namespace) - len(path):]
    return all(p == "*" or p == n for p, n in zip(path, part))
