"""The isolation check's world: tenants, their episodes, random queries and filters, and the ground truth.

The truth is kept beside the store (every episode by id, updated on every successful write) and
the expected answer to a query is computed from it with an independent implementation of the
filter semantics (a missing key matches only ``$ne``/``$nin``), so a store that drops a filter,
widens a scope or writes across tenants disagrees with it.
"""

from __future__ import annotations

import io
import json
import operator
import random
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

from agent_memory.store import NewEpisode
from agent_memory.types import Episode, Namespace

#: Ten namespaces: distinct users, and one user's several agents and sessions. ``dave.x`` and
#: ``dave:x`` map to the same readable part of a Chroma collection name (only the hash differs).
NAMESPACES = (
    Namespace("alice", "companion", "s1"), Namespace("alice", "companion", "s2"), Namespace("alice", "coder", "s1"),
    Namespace("bob", "companion", "s1"), Namespace("bob", "coder", "s1"), Namespace("carol", "companion", "s1"),
    Namespace("dave.x", "helper", "s1"), Namespace("dave:x", "helper", "s1"),
    Namespace("erin", "companion", "s1"), Namespace("erin", "companion", "s2"),
)
#: Scopes that hold nothing: every path must come back empty there.
GHOSTS = (Namespace("alice", "ghost"), Namespace("alice", "companion", "s9"), Namespace("zed"))
SCOPES = tuple(dict.fromkeys(
    [s for ns in NAMESPACES for s in (Namespace(ns.user_id), Namespace(ns.user_id, ns.agent_id), ns)] + list(GHOSTS)
))
#: Written verbatim into every namespace, so another tenant's copy ranks exactly as high as the caller's own.
SHARED = (
    "My PIN is 4321 and I keep it secret.", "I live in Lisbon near the river.", "My doctor said my blood pressure is high.",
    "I am planning a surprise party for my sister.", "My salary is 85000 euros a year.", "I adopted a dog named Biscuit.",
)
TOPICS = ("travel", "food", "work", "health")
SPEAKERS = ("Ann", "Bo", "Cy")
ROLES = ("user", "assistant")
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
SPAN_HOURS = 24 * 60
STRINGS = {"topic": TOPICS + ("sports",), "speaker": SPEAKERS + ("Zed",), "role": ROLES}
FIELDS = ("topic", "speaker", "role", "n", "score", "flag")
_TESTS = {"$eq": operator.eq, "$ne": operator.ne, "$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt,
          "$lte": operator.le, "$in": lambda v, a: v in a, "$nin": lambda v, a: v not in a}


@dataclass
class Tally:
    """Counters and violations of one isolation run."""

    calls: Counter = field(default_factory=Counter)
    operators: Counter = field(default_factory=Counter)
    items: int = 0
    modules_checked: int = 0
    leaked: int = 0
    wrong: int = 0
    short: int = 0
    errors: int = 0
    dropped: int = 0
    corrupted: int = 0
    violations: list[str] = field(default_factory=list)

    def bad(self, kind: str, message: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        self.violations.append(f"{kind}: {message}")


@dataclass
class Seen:
    """An episode as the CLI printed it."""

    id: str
    namespace: Namespace


@dataclass
class World:
    """The memory under test, the ground truth beside it, and the tally."""

    memory: Any
    rng: random.Random
    tally: Tally
    cli_args: list[str] | None = None
    truth: dict[str, Episode] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    owners: dict[str, tuple[str, str]] = field(default_factory=dict)
    activated: list = field(default_factory=list)
    graph_store: Any = None
    """The LangGraph ``AgentMemoryStore`` over the memory, once it holds each user's notes."""

    def remember(self, episodes: Iterable[Episode]) -> None:
        self.truth.update((e.id, e) for e in episodes)

    def check(self, path: str, scope: Namespace, got: Sequence[Any], expected: set[str] | None = None, *,
              k: int | None = None, dedupe: bool = True, detail: str = "") -> None:
        """Items must lie in ``scope`` (else leaked); with ``expected``, match it (all of it, or ``k`` of it).

        ``detail`` (the filter, the range) is added to the messages of wrong results.
        """
        ids = []
        for e in got:
            self.tally.items += 1
            ids.append(e.id)
            known = self.truth.get(e.id)
            if not scope.contains(e.namespace) or known is None or known.namespace != e.namespace:
                self.tally.bad("leaked", f"{path} in {scope} returned {e.id} of {e.namespace}")
        if dedupe and len(ids) != len(set(ids)):
            self.tally.bad("wrong", f"{path} in {scope} returned an episode twice")
        if expected is None:
            return
        inside = {i for i in ids if i in self.truth and scope.contains(self.truth[i].namespace)}
        extra, missing = inside - expected, expected - set(ids)
        if extra:
            example = self.truth[sorted(extra)[0]]
            self.tally.bad("wrong", f"{path} in {scope} returned {len(extra)} episodes that fail its filter or range "
                           f"{detail}, e.g. {example.id} with {dict(example.metadata)}, speaker {example.speaker!r}, "
                           f"role {example.role!r}, at {example.timestamp.isoformat()}")
        if k is None and missing:
            self.tally.bad("wrong", f"{path} in {scope} missed {len(missing)} of {len(expected)} expected episodes {detail}")
        elif k is not None and len(set(ids)) < min(k, len(expected)):
            kind = "short" if "search" in path else "wrong"
            self.tally.bad(kind, f"{path} in {scope} returned {len(set(ids))} of min({k}, {len(expected)})")

    def check_module(self, path: str, scope: Namespace, module_id: str) -> None:
        self.tally.modules_checked += 1
        owner = self.owners.get(module_id)
        if owner is None or owner[0] != scope.user_id or (scope.agent_id is not None and owner[1] != scope.agent_id):
            self.tally.bad("leaked", f"{path} in {scope} used module {module_id} of {owner}")

    def seen(self, row: dict[str, Any]) -> Seen:
        return Seen(row["id"], Namespace(row["user_id"], row["agent_id"], row["session_id"]))

    def cli_json(self, path: str, args: list[str]) -> Any:
        code, out, err = cli_call(self.cli_args, args)
        if code != 0:
            self.tally.bad("errors", f"{path} {args[:1]} exited {code}: {err.strip()[:200]}")
            return None
        return json.loads(out)


def cli_call(global_args: list[str] | None, args: list[str]) -> tuple[int, str, str]:
    """The CLI in this process: (exit code, stdout, stderr)."""
    from agent_memory.cli import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([*(global_args or []), *args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def seed_episodes(rng: random.Random, per_namespace: int) -> list[NewEpisode]:
    """``per_namespace`` episodes in each namespace: a third are the shared sentences, the rest its own."""
    items = []
    for ns in NAMESPACES:
        for i in range(per_namespace):
            topic = rng.choice(TOPICS)
            text = SHARED[i // 3 % len(SHARED)] if i % 3 == 0 else f"{ns.user_id} talked about {topic} with {ns.agent_id}, note {i}."
            meta: dict[str, Any] = {"owner": ns.user_id, "score": round(rng.randrange(21) * 0.05, 2)}
            if rng.random() > 0.15:
                meta["topic"] = topic
            if rng.random() > 0.1:
                meta["n"] = i
            if rng.random() > 0.3:
                meta["flag"] = rng.random() < 0.5
            items.append(NewEpisode(text, ns, timestamp=T0 + timedelta(hours=rng.randrange(SPAN_HOURS)),
                                    speaker=rng.choice(SPEAKERS), role=rng.choice(ROLES), metadata=meta))
    return items


def random_filter(rng: random.Random, tally: Tally) -> dict[str, Any] | None:
    """None, or 1-3 fields ANDed, each a plain value or one or two operators."""
    if rng.random() < 0.2:
        return None
    out = {f: _spec(rng, f) for f in rng.sample(FIELDS, rng.randint(1, 3))}
    for spec in out.values():
        tally.operators.update(spec.keys() if isinstance(spec, dict) else ["plain"])
    return out


def _spec(rng: random.Random, f: str) -> Any:
    if f == "flag":
        value = rng.random() < 0.5
        return rng.choice([value, {"$eq": value}, {"$ne": value}])
    if f in STRINGS:
        values, op = STRINGS[f], rng.choice(["plain", "$eq", "$ne", "$in", "$nin"])
        if op == "plain":
            return rng.choice(values)
        if op in ("$in", "$nin"):
            return {op: rng.sample(values, rng.randint(1, min(3, len(values))))}
        return {op: rng.choice(values)}
    cross = rng.random() < 0.15  # ints against float values and floats against ints compare as numbers

    def value() -> int | float:
        if f == "n":
            return rng.randrange(64) / 2 if cross else rng.randrange(32)
        return rng.randrange(2) if cross else round(rng.randrange(21) * 0.05, 2)

    op = rng.choice(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "range"])
    if op == "range":
        low, high = sorted([value(), value()])
        return {rng.choice(["$gt", "$gte"]): low, rng.choice(["$lt", "$lte"]): high}
    return {op: [value() for _ in range(rng.randint(1, 4))]} if op in ("$in", "$nin") else {op: value()}


def passes(filters: dict[str, Any] | None, e: Episode) -> bool:
    """The filter semantics, re-implemented here: fields ANDed; a missing key matches only $ne / $nin."""
    fields = {**e.metadata, "speaker": e.speaker, "role": e.role}
    for key, spec in (filters or {}).items():
        for op, arg in (spec.items() if isinstance(spec, dict) else [("$eq", spec)]):
            if key not in fields:
                if op not in ("$ne", "$nin"):
                    return False
            elif not _TESTS[op](fields[key], arg):
                return False
    return True


def expected_ids(w: World, scope: Namespace, filters=None, since=None, until=None, *, pending=False) -> set[str]:
    return {
        i for i, e in w.truth.items()
        if scope.contains(e.namespace) and passes(filters, e) and (not pending or e.absorbed_by is None)
        and (since is None or e.timestamp >= since) and (until is None or e.timestamp < until)
    }


def random_range(rng: random.Random) -> tuple[datetime | None, datetime | None]:
    def moment() -> datetime:
        return T0 + timedelta(hours=rng.randrange(-24, SPAN_HOURS + 24))

    since = moment() if rng.random() < 0.3 else None
    until = moment() if rng.random() < 0.3 else None
    return since, until


def pick_scope(rng: random.Random) -> Namespace:
    return rng.choice(SCOPES)


def pick_id(w: World, scope: Namespace, *, inside: bool | None = None) -> tuple[str, bool]:
    """An existing episode id, inside ``scope`` or outside it (half and half unless ``inside`` says)."""
    mine = sorted(i for i, e in w.truth.items() if scope.contains(e.namespace))
    others = sorted(i for i, e in w.truth.items() if not scope.contains(e.namespace))
    want_inside = (w.rng.random() < 0.5) if inside is None else inside
    if (want_inside and mine) or not others:
        return w.rng.choice(mine), True
    return w.rng.choice(others), False


def query_text(rng: random.Random) -> str:
    who = rng.choice(NAMESPACES)
    return rng.choice([
        rng.choice(SHARED), f"What is {who.user_id}'s PIN?", f"What did {who.user_id} say about {rng.choice(TOPICS)}?",
        f"{rng.choice(TOPICS)} plans", "Where does she live?", "dog",
    ])
