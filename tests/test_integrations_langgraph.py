"""LangGraph integration: AgentMemoryStore against LangGraph's BaseStore contract.

LangGraph ships no store conformance suite, so the contract tests below run against LangGraph's own
``InMemoryStore`` (the reference, with the same embedder) and against ``AgentMemoryStore`` on the
in-memory twin and on embedded Chroma: where the reference and ours agree, the semantics are LangGraph's.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from langgraph.store.base import GetOp, Item, ListNamespacesOp, MatchCondition, PutOp, SearchItem, SearchOp
from langgraph.store.memory import InMemoryStore

from agent_memory import AgentMemory, EpisodicStore, MemoryConfig, StoreConfig, ValidationError
from agent_memory.errors import InvalidNamespaceError
from agent_memory.integrations.langgraph import MAX_DEPTH, AgentMemoryStore

KINDS = ["reference", "memory", "chroma"]


def make_memory(kind: str, embedder, tmp_path) -> AgentMemory:
    config = MemoryConfig(home=str(tmp_path / "home"))
    if kind == "chroma":
        store = EpisodicStore.embedded(tmp_path / "store", embedder, StoreConfig(collection_prefix=f"t{uuid.uuid4().hex[:8]}"))
    else:
        store = EpisodicStore.in_memory(embedder)
    return AgentMemory(store, config=config)


@pytest.fixture(params=KINDS)
def lg_store(request, embedder, tmp_path):
    """The same contract against LangGraph's InMemoryStore and AgentMemoryStore (in-memory twin, Chroma)."""
    index = {"dims": embedder.dimension, "fields": ["text"]}
    if request.param == "reference":
        return InMemoryStore(index={**index, "embed": lambda texts: [list(map(float, v)) for v in embedder.embed(texts)]})
    return AgentMemoryStore(make_memory(request.param, embedder, tmp_path), index=index)


@pytest.fixture
def memory(embedder, tmp_path) -> AgentMemory:
    return make_memory("memory", embedder, tmp_path)


# -- the BaseStore contract (reference and ours) ---------------------------------------------------
def test_put_get_round_trip(lg_store):
    before = time.time()
    lg_store.put(("ana", "memories"), "k1", {"text": "My dog is called Biscuit.", "n": 1, "tags": ["pet"]})
    item = lg_store.get(("ana", "memories"), "k1")
    assert isinstance(item, Item)
    assert (item.namespace, item.key) == (("ana", "memories"), "k1")
    assert item.value == {"text": "My dog is called Biscuit.", "n": 1, "tags": ["pet"]}
    assert before - 1 <= item.created_at.timestamp() <= item.updated_at.timestamp() <= time.time() + 1
    assert item.created_at.tzinfo is not None
    assert lg_store.get(("ana", "memories"), "other") is None
    assert lg_store.get(("ana", "elsewhere"), "k1") is None
    assert lg_store.get(("ana",), "k1") is None  # a namespace is exact for get


def test_put_replaces_and_none_deletes(lg_store):
    ns = ("ana", "memories")
    lg_store.put(ns, "k1", {"text": "I live in Toronto."})
    first = lg_store.get(ns, "k1")
    lg_store.put(ns, "k1", {"text": "I moved to Lisbon."})
    second = lg_store.get(ns, "k1")
    assert second.value == {"text": "I moved to Lisbon."} and second.updated_at >= first.updated_at
    assert [i.key for i in lg_store.search(ns)] == ["k1"]  # replaced, not added
    lg_store.delete(ns, "k1")
    assert lg_store.get(ns, "k1") is None and lg_store.search(ns) == []
    lg_store.delete(ns, "never-there")  # deleting nothing is fine
    lg_store.put(ns, "k2", {"text": "x"})
    lg_store.batch([PutOp(ns, "k2", None)])
    assert lg_store.get(ns, "k2") is None


def _fill(store):
    store.put(("ana", "memories"), "dog", {"text": "My dog is called Biscuit.", "kind": "pet", "age": 3, "meta": {"src": "chat"}})
    store.put(("ana", "memories"), "city", {"text": "I moved to Lisbon last spring.", "kind": "place", "age": 1})
    store.put(("ana", "profile"), "job", {"text": "I work as a nurse.", "kind": "work", "age": 7})
    store.put(("ben", "memories"), "cat", {"text": "My cat is called Pepper.", "kind": "pet", "age": 5})


def test_search_scopes_by_prefix(lg_store):
    _fill(lg_store)
    assert {i.key for i in lg_store.search(("ana",))} == {"dog", "city", "job"}
    assert {i.key for i in lg_store.search(("ana", "memories"))} == {"dog", "city"}
    assert {i.key for i in lg_store.search(())} == {"dog", "city", "job", "cat"}
    assert lg_store.search(("ana", "memo")) == []  # labels match whole, not as string prefixes
    assert all(isinstance(i, SearchItem) and i.score is None for i in lg_store.search(("ana",)))


@pytest.mark.parametrize("flt, keys", [
    ({"kind": "pet"}, {"dog"}),
    ({"kind": {"$eq": "place"}}, {"city"}),
    ({"kind": {"$ne": "pet"}}, {"city", "job"}),
    ({"age": {"$gt": 1}}, {"dog", "job"}),
    ({"age": {"$gte": 3, "$lt": 7}}, {"dog"}),
    ({"age": {"$lte": 3}, "kind": "place"}, {"city"}),
    ({"meta": {"src": "chat"}}, {"dog"}),
    ({"missing": "x"}, set()),
])
def test_search_filters(lg_store, flt, keys):
    _fill(lg_store)
    assert {i.key for i in lg_store.search(("ana",), filter=flt)} == keys


def test_semantic_search_ranks_and_filters(lg_store):
    _fill(lg_store)
    hits = lg_store.search(("ana",), query="what is the name of my dog?")
    assert hits[0].key == "dog" and hits[0].score > hits[-1].score
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert {h.key for h in lg_store.search((), query="pets", filter={"kind": "pet"})} == {"dog", "cat"}
    assert [h.key for h in lg_store.search(("ana",), query="dog", limit=1)] == ["dog"]


def test_pagination(lg_store):
    for n in range(5):
        lg_store.put(("ana", "notes"), f"n{n}", {"text": f"note number {n}", "n": n})
    pages = [lg_store.search(("ana", "notes"), limit=2, offset=o) for o in (0, 2, 4)]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert len({i.key for p in pages for i in p}) == 5
    ranked = lg_store.search(("ana", "notes"), query="note", limit=2, offset=3)
    assert len(ranked) == 2 and all(h.score is not None for h in ranked)


def test_list_namespaces(lg_store):
    for ns in [("a", "b", "c"), ("a", "b", "d", "e"), ("a", "b", "d", "i"), ("a", "b", "f"), ("a", "c", "f")]:
        lg_store.put(ns, "k", {"text": "x"})
    # LangGraph's own docstring example
    assert lg_store.list_namespaces(prefix=("a", "b"), max_depth=3) == [("a", "b", "c"), ("a", "b", "d"), ("a", "b", "f")]
    assert lg_store.list_namespaces(suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f")]
    assert lg_store.list_namespaces(prefix=("a", "*", "f")) == [("a", "b", "f"), ("a", "c", "f")]
    assert lg_store.list_namespaces(prefix=("a",), suffix=("i",)) == [("a", "b", "d", "i")]
    assert lg_store.list_namespaces(max_depth=2) == [("a", "b"), ("a", "c")]
    assert lg_store.list_namespaces(limit=2, offset=1) == [("a", "b", "d", "e"), ("a", "b", "d", "i")]
    assert lg_store.list_namespaces(prefix=("z",)) == []


def test_batch_mixes_ops_and_returns_one_result_each(lg_store):
    ns = ("ana", "memories")
    results = lg_store.batch([
        PutOp(ns, "a", {"text": "alpha"}),
        PutOp(ns, "b", {"text": "beta"}),
        GetOp(ns, "zzz"),
        ListNamespacesOp(match_conditions=(MatchCondition("prefix", ("ana",)),)),
    ])
    assert results[:3] == [None, None, None] and results[3] == [ns]
    got, found = lg_store.batch([GetOp(ns, "a"), SearchOp(ns, filter={"text": "beta"})])
    assert got.value == {"text": "alpha"} and [i.key for i in found] == ["b"]


def test_async_api(lg_store):
    async def scenario():
        ns = ("ana", "memories")
        await lg_store.aput(ns, "dog", {"text": "My dog is called Biscuit."})
        item = await lg_store.aget(ns, "dog")
        hits = await lg_store.asearch(("ana",), query="dog")
        spaces = await lg_store.alist_namespaces()
        await lg_store.adelete(ns, "dog")
        return item, hits, spaces, await lg_store.aget(ns, "dog")

    item, hits, spaces, gone = asyncio.run(scenario())
    assert item.value["text"] == "My dog is called Biscuit." and hits[0].key == "dog"
    assert spaces == [("ana", "memories")] and gone is None


def test_index_false_items_are_kept_but_not_ranked(lg_store):
    lg_store.put(("ana", "m"), "ranked", {"text": "My dog is called Biscuit."})
    lg_store.put(("ana", "m"), "plain", {"text": "My dog is called Biscuit."}, index=False)
    hits = lg_store.search(("ana",), query="dog")
    assert [(h.key, h.score is None) for h in hits] == [("ranked", False), ("plain", True)]
    assert lg_store.get(("ana", "m"), "plain").value == {"text": "My dog is called Biscuit."}


def test_namespace_labels_are_validated(lg_store):
    from langgraph.store.base import InvalidNamespaceError as LangGraphNamespaceError

    for bad in [("a.b",), ("",), ("langgraph", "x")]:
        with pytest.raises(LangGraphNamespaceError):
            lg_store.put(bad, "k", {"text": "x"})
    if isinstance(lg_store, AgentMemoryStore):  # raw ops are checked too (InMemoryStore does not)
        with pytest.raises(LangGraphNamespaceError):
            lg_store.batch([GetOp(("a.b",), "k")])


# -- ours only: the mapping onto episodes, isolation, errors ------------------------------------------
def test_items_are_episodes_the_memory_can_search_and_version(memory):
    store = AgentMemoryStore(memory, index={"fields": ["text"]})
    store.put(("ana", "memories"), "dog", {"text": "My dog is called Biscuit.", "kind": "pet"})
    (episode,) = memory.list("ana")
    assert str(episode.namespace) == "ana/langgraph/store" and episode.text == "My dog is called Biscuit."
    assert episode.role == "observation" and episode.absorbed_by is None
    assert episode.metadata["lg_ns"] == "ana.memories" and episode.metadata["lg_key"] == "dog"
    assert episode.metadata["lg_p1"] == "ana" and episode.metadata["lg_p2"] == "ana.memories"
    assert memory.search("what is my dog called?", "ana", 1)[0].episode.id == episode.id
    created = store.get(("ana", "memories"), "dog").created_at
    store.put(("ana", "memories"), "dog", {"text": "My dog is called Pretzel.", "kind": "pet"})
    updated = store.get(("ana", "memories"), "dog")
    assert updated.created_at == created and updated.updated_at > created
    assert [e.text for e in memory.history(episode.id, "ana")] == ["My dog is called Biscuit.", "My dog is called Pretzel."]
    store.put(("ana", "memories"), "dog", {"text": "My dog is called Pretzel.", "kind": "dog"})  # same text
    assert memory.get(episode.id, "ana").version == 3 and len(memory.list("ana")) == 1


def test_default_index_embeds_the_whole_value(memory):
    store = AgentMemoryStore(memory)
    store.put(("ana", "m"), "k", {"food": "peanuts", "allergy": True})
    (episode,) = memory.list("ana")
    assert episode.text == '{"allergy": true, "food": "peanuts"}'
    store.put(("ana", "m"), "k2", {"note": "x", "body": {"title": "Trip to Porto"}}, index=["body.title"])
    assert {e.text for e in memory.list("ana")} >= {"Trip to Porto"}


def test_bound_stores_never_see_another_users_items(memory):
    ana, ben = AgentMemoryStore(memory, user_id="ana"), AgentMemoryStore(memory, user_id="ben")
    ana.put(("memories",), "pet", {"text": "My dog is called Biscuit."})
    ben.put(("memories",), "pet", {"text": "My cat is called Pepper."})
    assert ana.get(("memories",), "pet").value["text"] == "My dog is called Biscuit."
    assert ben.get(("memories",), "pet").value["text"] == "My cat is called Pepper."
    for query in ["My dog is called Biscuit.", "pets", None]:
        assert [h.value["text"] for h in ben.search((), query=query, limit=100)] == ["My cat is called Pepper."]
    assert ben.list_namespaces() == [("memories",)]
    ben.delete(("memories",), "pet")
    assert ana.get(("memories",), "pet") is not None
    assert {n.user_id for n in memory.store.namespaces()} == {"ana"}


def test_unbound_store_takes_the_user_from_the_namespace(memory):
    store = AgentMemoryStore(memory, index={"fields": ["text"]})
    store.put(("ana", "memories"), "pet", {"text": "My dog is called Biscuit."})
    store.put(("ben", "memories"), "pet", {"text": "My cat is called Pepper."})
    assert [e.text for e in memory.list("ben")] == ["My cat is called Pepper."]
    hits = store.search(("ben",), query="My dog is called Biscuit.", limit=100)
    assert [h.namespace for h in hits] == [("ben", "memories")]
    assert store.list_namespaces(prefix=("ana",)) == [("ana", "memories")]
    with pytest.raises(InvalidNamespaceError):
        store.put(("not a user id!", "m"), "k", {"text": "x"})
    assert store.get(("not a user id!", "m"), "k") is None and store.search(("not a user id!",)) == []


def test_user_index_picks_the_label(memory):
    store = AgentMemoryStore(memory, user_index=1)
    store.put(("memories", "ana"), "pet", {"text": "My dog is called Biscuit."})
    assert [e.text for e in memory.list("ana")] == ['{"text": "My dog is called Biscuit."}']
    assert store.get(("memories", "ana"), "pet") is not None
    with pytest.raises(InvalidNamespaceError, match="position 1"):
        store.put(("memories",), "k", {"text": "x"})
    assert store.list_namespaces(prefix=("*", "ana")) == [("memories", "ana")]


@pytest.mark.parametrize("make, error", [
    (lambda m: AgentMemoryStore(m, index={"embed": lambda texts: texts}), "index.embed"),
    (lambda m: AgentMemoryStore(m, index={"dims": 1536}), "index.dims"),
    (lambda m: AgentMemoryStore(m, user_index=-1), "user_index"),
    (lambda m: AgentMemoryStore(m).put(("ana",), "k", {"when": object()}), "value"),
    (lambda m: AgentMemoryStore(m).put(("ana",), "k", {"x": float("nan")}), "value"),
    (lambda m: AgentMemoryStore(m).put(("ana",), "k", {"x": 1}, ttl=5), None),
    (lambda m: AgentMemoryStore(m).put(tuple("a" * (MAX_DEPTH + 1)), "k", {"x": 1}), "namespace"),
    (lambda m: AgentMemoryStore(m).search(("ana",), filter={"x": {"$like": 1}}), "filter"),
])
def test_bad_input_is_refused_and_nothing_is_written(memory, make, error):
    AgentMemoryStore(memory).put(("ana",), "seed", {"x": 0})
    expected = NotImplementedError if error is None else ValidationError
    with pytest.raises(expected) as info:
        make(memory)
    if error is not None:
        assert info.value.field == error
    assert [e.metadata["lg_key"] for e in memory.list("ana")] == ["seed"]


def test_compiled_graph_uses_the_store(memory):
    from langgraph.config import get_store
    from langgraph.graph import START, StateGraph
    from langgraph.runtime import Runtime
    from typing_extensions import TypedDict

    class State(TypedDict):
        text: str
        recalled: list[str]

    def remember(state: State, runtime: Runtime) -> dict:
        if state["text"].endswith("."):
            runtime.store.put(("ana", "facts"), str(uuid.uuid4()), {"text": state["text"]})
        return {}

    def recall(state: State) -> dict:
        return {"recalled": [h.value["text"] for h in get_store().search(("ana",), query=state["text"], limit=1)]}

    builder = StateGraph(State)
    builder.add_node("remember", remember)
    builder.add_node("recall", recall)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", "recall")
    graph = builder.compile(store=AgentMemoryStore(memory, index={"fields": ["text"]}))
    graph.invoke({"text": "My dog is called Biscuit.", "recalled": []})
    graph.invoke({"text": "I moved to Lisbon.", "recalled": []})
    out = graph.invoke({"text": "what is my dog called?", "recalled": []})
    assert out["recalled"] == ["My dog is called Biscuit."]
    out = asyncio.run(graph.ainvoke({"text": "where do I live now?", "recalled": []}))
    assert out["recalled"] == ["I moved to Lisbon."]
