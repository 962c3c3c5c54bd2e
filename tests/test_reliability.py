"""The reliability harnesses (issue 8), at short counts: isolation, server faults, load; and that each can fail."""

from __future__ import annotations

import json

import pytest

from agent_memory import AgentMemory, MemoryConfig
from agent_memory.errors import StoreError
from agent_memory.evals.reliability import faults, isolation, load
from agent_memory.evals.reliability.backends import MODES
from agent_memory.store import EpisodicStore, NewEpisode
from agent_memory.store.memory import InMemoryBackend
from agent_memory.types import Namespace

pytestmark = pytest.mark.slow  # a real Chroma server, real threads


def test_isolation_holds_on_every_backend_and_every_path(embedder, chroma_server, tiny_model_dir):
    res = isolation.run_isolation(200, MODES, server=chroma_server.url, embedder=embedder, modules=1,
                                  backbone=str(tiny_model_dir), per_namespace=20, echo=None)
    assert res["violations"] == []
    assert res["leaked"] == res["wrong"] == res["errors"] == res["dropped_filters"] == res["corrupted"] == 0
    for mode, r in res["backends"].items():
        expected_paths = set(isolation.WEIGHTS) - ({"cli.search", "cli.list", "cli.get"} if mode == "memory" else set())
        assert set(r["calls"]) == expected_paths, f"{mode}: every path was exercised"
        assert r["items_checked"] > 500 and r["modules_checked"] > 0
        assert set(r["operators"]) >= {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"}
        assert r["filters_refused"] == 3 * (len(isolation.UNHONOURABLE) + len(isolation.BAD_TIMES))
        assert r["duplicates"]["original_intact"] and r["duplicates"]["distinct_ids"] == 7
        assert r["delete_user"]["other_users_changed"] == 0 and r["delete_user"]["removed"] > 0


class AllPartitionsBackend(InMemoryBackend):
    """A broken backend: reads ignore the user partition and the agent/session scope (a dropped namespace filter)."""

    def _matching(self, part, conditions):
        scoped = [c for c in conditions if c.key not in ("agent_id", "session_id")]
        return [r for p, rows in self._parts.items() if p.history == part.history
                for r in InMemoryBackend._matching(self, p, scoped)]


class NoDefenceStore(EpisodicStore):
    """And a store without its defence in depth (it would refuse the foreign rows)."""

    @staticmethod
    def _checked(record, namespace):
        return record


class FilterDroppingStore(EpisodicStore):
    """A store that silently drops every user filter (and so accepts ones it cannot honour)."""

    def _conditions(self, namespace, filters=None, since=None, until=None):
        return super()._conditions(namespace, None, since, until)


def _memory_on(store, tmp_path):
    return AgentMemory(store, config=MemoryConfig(home=str(tmp_path / "home")))


def test_isolation_check_catches_leaks_errors_and_dropped_filters(embedder, tmp_path):
    leaky = NoDefenceStore(AllPartitionsBackend(), embedder)
    res = isolation.check_isolation(_memory_on(leaky, tmp_path), queries=80, modules=0, per_namespace=10, echo=None)
    assert res["leaked"] > 0 and res["violations"]
    assert any(v.startswith("leaked: langchain.retriever") for v in res["violations"]), "the integrations are checked too"

    defended = EpisodicStore(AllPartitionsBackend(), embedder)
    res = isolation.check_isolation(_memory_on(defended, tmp_path), queries=80, modules=0, per_namespace=10, echo=None)
    assert res["leaked"] == 0, "the store's own namespace check refuses every foreign row..."
    assert res["errors"] > 0, "...loudly"

    dropping = FilterDroppingStore(InMemoryBackend(), embedder)
    res = isolation.check_isolation(_memory_on(dropping, tmp_path), queries=80, modules=0, per_namespace=10, echo=None)
    assert res["wrong"] > 0 and res["dropped_filters"] > 0 and res["leaked"] == 0


def test_faults_lose_nothing_and_fail_clearly_while_the_server_is_down(embedder):
    res = faults.run_faults(60, 1, down_s=1.5, embedder=embedder, echo=None)
    assert res["violations"] == []
    assert res["lost"] == 0 and res["unclear_errors"] == 0 and res["stored_twice"] == 0
    assert res["failing_call"]["n"] > 0, "the kill hit calls in flight"
    assert res["recovery"][0]["restarted"] and res["recovery"][0]["successes_after"] > 0
    assert res["episodes_acknowledged"] + res["adds_failed"] >= 60


def test_fault_verification_counts_a_silent_loss(embedder):
    store = EpisodicStore.in_memory(embedder)
    kept = store.add("kept", Namespace(faults.USERS[0], "agent", "s1"))
    stream = faults.Stream(2)
    stream.log += [
        faults.Op("add", 0.0, 0.01, ((faults.USERS[0], "kept"),), (kept.id,)),
        faults.Op("add", 0.0, 0.01, ((faults.USERS[1], "acknowledged, never written"),), ("ep_0123abcd",)),
        faults.Op("search", 0.0, 1.0, error="KeyError: 'x'", clear=False),
    ]
    verified = faults.verify(stream, store)
    assert verified["lost"] == 1
    out = faults.report(stream, [], verified, [], 1.0, 3, 0.2, 30.0, 0, 1.0)
    assert any(v.startswith("lost") for v in out["violations"]) and any(v.startswith("unclear") for v in out["violations"])


def test_load_runs_50_clients_without_errors(embedder, chroma_server):
    res = load.run_load(50, 3, ["embedded", "server"], server=chroma_server.url, embedder=embedder, echo=None)
    assert res["violations"] == []
    for r in res["backends"].values():
        assert r["errors"] == 0 and r["lost"] == 0 and r["clients"] == 50
        assert r["add"]["n"] > 0 and r["search"]["n"] > 0 and r["ops_per_client"]["min"] > 0


class FlakyStore:
    """Every third search fails: the load check must count it."""

    def __init__(self, inner):
        self.inner, self.n = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def search(self, *args, **kwargs):
        self.n += 1
        if self.n % 3 == 0:
            raise StoreError("injected failure")
        return self.inner.search(*args, **kwargs)


def test_load_check_counts_errors(embedder):
    res = load.load_backend([FlakyStore(EpisodicStore.in_memory(embedder))] * 4, 0.5, search_ratio=1.0, seed_episodes=5)
    assert res["errors"] > 0 and res["violations"]


def test_add_many_names_what_a_failed_rollback_leaves_behind(embedder):
    class SecondUserFails(InMemoryBackend):
        def insert(self, part, records):
            if part.user_id == "b":
                raise StoreError("server went away")
            super().insert(part, records)

        def remove(self, part, ids):
            raise StoreError("still away")

    store = EpisodicStore(SecondUserFails(), embedder)
    with pytest.raises(StoreError, match="server went away.*may remain: ep_"):
        store.add_many([NewEpisode("one", Namespace("a")), NewEpisode("two", Namespace("b"))])


def test_check_commands_write_json_and_exit_1_on_violations(cli_runner, tmp_path, monkeypatch):
    run = cli_runner(tmp_path / "home")
    out = tmp_path / "load.json"
    code, stdout, _ = run("check", "load", "--clients", "3", "--seconds", "0.3", "--modes", "memory", "--json", str(out))
    assert code == 0 and "no violations" in stdout
    assert json.loads(out.read_text())["backends"]["memory"]["errors"] == 0
    monkeypatch.setattr(load, "run_load", lambda *a, **k: {"check": "load", "violations": ["error: injected"]})
    code, _, stderr = run("check", "load", "--modes", "memory")
    assert code == 1 and "violation: error: injected" in stderr
    code, _, stderr = run("check", "isolation", "--modes", "memory,bogus")
    assert code == 2 and "modes" in stderr


FLOAT_CASES = [  # (filter on n, the n values that match); n holds ints and one float
    ({"$eq": 20.5}, {20.5}), ({"$ne": 20.5}, {-1, 0, 1, 20, 21}), ({"$in": [20.5, 0.5]}, {20.5}),
    ({"$nin": [20.5]}, {-1, 0, 1, 20, 21}), ({"$gte": 20.5}, {20.5, 21}), ({"$lt": 20.5}, {-1, 0, 1, 20}),
    ({"$gt": -0.5}, {0, 1, 20, 20.5, 21}), ({"$lte": -0.5}, {-1}), ({"$gt": 0.5, "$lt": 20.7}, {1, 20, 20.5}),
    ({"$eq": 20}, {20}), ({"$in": [20.0]}, {20}),
]


def test_float_operands_compare_exactly_with_int_values(store):
    """Found by the isolation check: Chroma truncates a float operand compared with an int (20.5 -> 20)."""
    ns = Namespace("numbers", "a", "s")
    store.add_many([NewEpisode(f"the value is {n}", ns, metadata={"n": n}) for n in (-1, 0, 1, 20, 20.5, 21)])
    for spec, want in FLOAT_CASES:
        listed = {e.metadata["n"] for e in store.list(ns, filters={"n": spec})}
        found = {h.episode.metadata["n"] for h in store.search("the value", ns, 10, filters={"n": spec, "role": "user"})}
        assert listed == want and found == want, spec
