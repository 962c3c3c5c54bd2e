"""The metadata filter language, compiled once and evaluated by every backend.

A filter is a mapping ``{field: value}`` or ``{field: {"$op": value}}``; several
fields are ANDed. Fields are ``speaker``, ``role`` or a key of the episode's own
metadata. Operators: ``$eq $ne $gt $gte $lt $lte $in $nin``. Range operators take
numbers. An episode without the key matches ``$ne`` and ``$nin`` ("flag is not
true") and nothing else, as in Chroma.

The store reads only the caller's user partition and adds the agent / session
conditions itself, so a filter can narrow a search but never widen it past the
caller's namespace.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Mapping

from agent_memory.errors import InvalidFilterError
from agent_memory.types import Namespace
from agent_memory.validation import RESERVED_KEYS, check_scalar, check_timestamp

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": operator.eq,
    "$ne": operator.ne,
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
    "$in": lambda value, options: value in options,
    "$nin": lambda value, options: value not in options,
}
_RANGE_OPS = frozenset({"$gt", "$gte", "$lt", "$lte"})
_LIST_OPS = frozenset({"$in", "$nin"})
_BUILTIN_FIELDS = frozenset({"speaker", "role"})
_NAMESPACE_FIELDS = frozenset({"user_id", "agent_id", "session_id"})
METADATA_PREFIX = "m_"


@dataclass(frozen=True)
class Condition:
    """One ``stored_key <op> value`` test on a record's flat metadata."""

    key: str
    op: str
    value: Any

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        if self.key not in metadata:
            return self.op in ("$ne", "$nin")
        stored = metadata[self.key]
        if self.op in _RANGE_OPS and (isinstance(stored, (str, bool)) or stored is None):
            return False
        if self.op in ("$eq", "$ne") and type(stored) is bool is not type(self.value):
            return self.op == "$ne"
        return _OPS[self.op](stored, self.value)

    def to_chroma(self) -> dict[str, Any]:
        value = list(self.value) if self.op in _LIST_OPS else self.value
        return {self.key: {self.op: value}}


def storage_key(field: str) -> str:
    """Where a user-facing filter field lives in a record's flat metadata."""
    return field if field in _BUILTIN_FIELDS else METADATA_PREFIX + field


def compile_filters(filters: Mapping[str, Any] | None) -> list[Condition]:
    """Validate a user filter and turn it into conditions on stored keys."""
    if filters is None:
        return []
    if not isinstance(filters, Mapping):
        raise InvalidFilterError(
            "filters", f"expected a mapping, got {type(filters).__name__}", 'pass a dict like {"topic": "travel"}'
        )
    conditions = []
    for field, spec in filters.items():
        _check_field(field)
        if isinstance(spec, Mapping):
            if not spec:
                raise InvalidFilterError(f"filters.{field}", "has no operator", 'write {"$eq": value} or a plain value')
            conditions.extend(_condition(field, op, value) for op, value in spec.items())
        else:
            conditions.append(_condition(field, "$eq", spec))
    return conditions


def scope_conditions(
    namespace: Namespace, since: datetime | None = None, until: datetime | None = None
) -> list[Condition]:
    """Conditions a read adds inside the user's partition: agent, session, time range."""
    conds = []
    if namespace.agent_id is not None:
        conds.append(Condition("agent_id", "$eq", namespace.agent_id))
    if namespace.session_id is not None:
        conds.append(Condition("session_id", "$eq", namespace.session_id))
    if since is not None:
        conds.append(Condition("ts", "$gte", check_timestamp(since, "since").timestamp()))
    if until is not None:
        conds.append(Condition("ts", "$lt", check_timestamp(until, "until").timestamp()))
    return conds


def matches_all(conditions: list[Condition], metadata: Mapping[str, Any]) -> bool:
    return all(c.matches(metadata) for c in conditions)


def to_chroma_where(conditions: list[Condition]) -> dict[str, Any] | None:
    clauses = [c.to_chroma() for c in conditions]
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _check_field(field: Any) -> None:
    if not isinstance(field, str) or not field or field.startswith("$"):
        raise InvalidFilterError(
            "filters", f"field {field!r} is not allowed", "use speaker, role or a metadata key (logical $and/$or are not supported)"
        )
    if field in _NAMESPACE_FIELDS:
        raise InvalidFilterError(
            f"filters.{field}", "namespace fields cannot be filtered", "pass a Namespace to scope the query instead"
        )
    if field in RESERVED_KEYS and field not in _BUILTIN_FIELDS:
        raise InvalidFilterError(
            f"filters.{field}", "is a reserved field", "use since/until for time ranges and pending() for status"
        )


def _condition(field: str, op: Any, value: Any) -> Condition:
    name = f"filters.{field}"
    if op not in _OPS:
        raise InvalidFilterError(name, f"unknown operator {op!r}", "use one of " + " ".join(_OPS))
    if op in _LIST_OPS:
        if not isinstance(value, (list, tuple)) or not value:
            raise InvalidFilterError(name, f"{op} needs a non-empty list", f'write {{"{op}": [a, b]}}')
        values = tuple(check_scalar(v, name, InvalidFilterError) for v in value)
        if len({type(v) for v in values}) > 1:  # Chroma refuses mixed lists; refuse them on every backend alike
            raise InvalidFilterError(
                name, f"{op} mixes value types ({', '.join(sorted({type(v).__name__ for v in values}))})",
                "use values of one type: all strings, all ints, all floats or all booleans",
            )
        return Condition(storage_key(field), op, values)
    value = check_scalar(value, name, InvalidFilterError)
    if op in _RANGE_OPS and (isinstance(value, (bool, str))):
        raise InvalidFilterError(name, f"{op} compares numbers, got {value!r}", "pass an int or float")
    return Condition(storage_key(field), op, value)
