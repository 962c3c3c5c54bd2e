"""Tenant isolation: no read, update or delete in one namespace ever sees another's episodes."""

from __future__ import annotations

import itertools
import random
from datetime import datetime, timedelta, timezone

import pytest

from agent_memory.errors import NotFoundError
from agent_memory.store import NewEpisode
from agent_memory.types import Namespace

USERS, AGENTS, SESSIONS = ["u1", "u2", "u3"], ["a1", "a2"], ["s1", "s2"]
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
TOPICS = ["travel", "food", "work"]


@pytest.fixture
def populated(store):
    rng = random.Random(7)
    items = []
    for n in range(72):
        u, a, s = USERS[n % 3], AGENTS[(n // 3) % 2], SESSIONS[(n // 6) % 2]
        topic = rng.choice(TOPICS)
        items.append(
            NewEpisode(
                f"{u} {a} {s} talked about {topic} item {n}",
                Namespace(u, a, s),
                timestamp=T0 + timedelta(days=n),
                speaker=rng.choice(["Ann", "Bo"]),
                metadata={"topic": topic, "n": n},
            )
        )
    return store, store.add_many(items)


def _passes(e, filters) -> bool:
    if filters is None:
        return True
    fields = {**e.metadata, "speaker": e.speaker}
    (key, spec), = filters.items()
    value = fields[key]
    if not isinstance(spec, dict):
        return value == spec
    (op, arg), = spec.items()
    return {"$gte": lambda: value >= arg, "$in": lambda: value in arg, "$ne": lambda: value != arg}[op]()


def _scopes():
    for u in USERS:
        yield Namespace(u)
        for a in AGENTS:
            yield Namespace(u, a)
            for s in SESSIONS:
                yield Namespace(u, a, s)


FILTERS = [None, {"topic": "travel"}, {"n": {"$gte": 30}}, {"speaker": {"$in": ["Ann"]}}, {"topic": {"$ne": "food"}}]
RANGES = [(None, None), (T0 + timedelta(days=20), None), (None, T0 + timedelta(days=50))]


def test_every_read_path_stays_inside_its_namespace(populated):
    store, episodes = populated
    by_id = {e.id: e for e in episodes}
    rng = random.Random(11)
    checked = 0
    for scope, filters, (since, until) in itertools.product(list(_scopes()), FILTERS, RANGES):
        listed = store.list(scope, filters=filters, since=since, until=until)
        assert all(scope.contains(e.namespace) for e in listed)
        expected = {
            e.id for e in episodes
            if scope.contains(e.namespace)
            and (since is None or e.timestamp >= since)
            and (until is None or e.timestamp < until)
            and _passes(e, filters)
        }
        assert {e.id for e in listed} == expected
        hits = store.search(rng.choice(TOPICS), scope, k=50, filters=filters, since=since, until=until)
        assert {h.episode.id for h in hits} == {e.id for e in listed}
        assert all(scope.contains(by_id[h.episode.id].namespace) for h in hits)
        checked += 1
    assert checked == 21 * len(FILTERS) * len(RANGES)
    for scope in _scopes():
        assert all(scope.contains(e.namespace) for e in store.pending(scope))
        assert store.count(scope) == sum(scope.contains(e.namespace) for e in episodes)


def test_ids_from_another_namespace_are_invisible_and_untouchable(populated):
    store, episodes = populated
    for e in episodes[:12]:
        for scope in _scopes():
            if scope.contains(e.namespace):
                assert store.get(e.id, scope).id == e.id
                continue
            with pytest.raises(NotFoundError):
                store.get(e.id, scope)
            with pytest.raises(NotFoundError):
                store.update(e.id, scope, text="hijacked")
            with pytest.raises(NotFoundError):
                store.history(e.id, scope)
            with pytest.raises(NotFoundError):
                store.delete(e.id, scope)
            with pytest.raises(NotFoundError):
                store.mark_absorbed([e.id], scope, "mod-x")
        assert store.get(e.id, e.namespace) == e, "nothing was changed by the foreign calls"


def test_filters_cannot_widen_a_namespace(populated):
    store, _ = populated
    for field in ["user_id", "agent_id", "session_id"]:
        with pytest.raises(Exception):
            store.search("travel", Namespace("u1"), filters={field: "u2"})
    u1_hits = store.search("travel", Namespace("u1"), k=100, filters={"topic": {"$in": TOPICS}})
    assert {h.episode.namespace.user_id for h in u1_hits} == {"u1"}


def test_deleting_one_user_leaves_every_other_user_intact(populated):
    store, episodes = populated
    before = {u: store.count(Namespace(u)) for u in USERS}
    store.delete_user("u2")
    assert store.count(Namespace("u2")) == 0
    for u in ("u1", "u3"):
        assert store.count(Namespace(u)) == before[u]
