"""Bad input: a clear ValidationError naming the field, and nothing written."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from agent_memory.errors import (
    InvalidFilterError,
    InvalidMetadataError,
    InvalidNamespaceError,
    InvalidTextError,
    InvalidTimestampError,
    NotFoundError,
    ValidationError,
)
from agent_memory.store import EpisodicStore, NewEpisode
from agent_memory.config import StoreConfig
from agent_memory.types import Namespace

NS = Namespace("alice", "helper", "s1")
AWARE = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def small_store(embedder):
    store = EpisodicStore.in_memory(embedder, StoreConfig(max_text_chars=100))
    store.add("an existing episode", NS)
    return store


BAD_ADDS = [
    ("empty text", dict(text=""), InvalidTextError, "text"),
    ("whitespace text", dict(text=" \n\t "), InvalidTextError, "text"),
    ("text over the limit", dict(text="x" * 101), InvalidTextError, "text"),
    ("lone surrogate", dict(text="bad \ud800 char"), InvalidTextError, "text"),
    ("invalid utf-8 bytes", dict(text=b"\xff\xfe bad"), InvalidTextError, "text"),
    ("NUL character", dict(text="a\x00b"), InvalidTextError, "text"),
    ("int text", dict(text=42), InvalidTextError, "text"),
    ("None text", dict(text=None), InvalidTextError, "text"),
    ("list text", dict(text=["a"]), InvalidTextError, "text"),
    ("naive datetime", dict(timestamp=datetime(2024, 5, 1, 12, 0)), InvalidTimestampError, "timestamp"),
    ("naive ISO string", dict(timestamp="2024-05-01T12:00:00"), InvalidTimestampError, "timestamp"),
    ("unparseable date", dict(timestamp="yesterday"), InvalidTimestampError, "timestamp"),
    ("int timestamp", dict(timestamp=1714567890), InvalidTimestampError, "timestamp"),
    ("NaN metadata", dict(metadata={"score": float("nan")}), InvalidMetadataError, "metadata.score"),
    ("nested metadata", dict(metadata={"tags": ["a", "b"]}), InvalidMetadataError, "metadata.tags"),
    ("reserved metadata key", dict(metadata={"user_id": "bob"}), InvalidMetadataError, "metadata"),
    ("non-dict metadata", dict(metadata=[("a", 1)]), InvalidMetadataError, "metadata"),
    ("unknown role", dict(role="wizard"), ValidationError, "role"),
    ("non-string speaker", dict(speaker=7), ValidationError, "speaker"),
]


@pytest.mark.parametrize("case,fields,error,field", BAD_ADDS, ids=[c[0] for c in BAD_ADDS])
def test_bad_add_names_the_field_and_writes_nothing(small_store, case, fields, error, field):
    args = {"text": "fine text", "namespace": NS, **fields}
    with pytest.raises(error) as info:
        small_store.add_many([NewEpisode(**args)])
    assert info.value.field == field
    assert info.value.fix, "every error says how to fix it"
    assert small_store.count() == 1


def test_one_bad_item_in_a_batch_writes_none_of_it(small_store):
    batch = [NewEpisode("good one", NS), NewEpisode("good two", NS), NewEpisode("  ", NS)]
    with pytest.raises(InvalidTextError) as info:
        small_store.add_many(batch)
    assert "text" in str(info.value)
    assert small_store.count() == 1


@pytest.mark.parametrize(
    "text",
    ["", "a/b/c/d", "../etc", "al ice", "alice/../bob", "/alice", "alice//s1", "a" * 200, "bob\x00"],
)
def test_malformed_namespace_strings_are_rejected(text):
    with pytest.raises(InvalidNamespaceError) as info:
        Namespace.parse(text)
    assert info.value.field in {"namespace", "user_id", "agent_id", "session_id"}


def test_session_without_agent_is_rejected():
    with pytest.raises(InvalidNamespaceError) as info:
        Namespace("alice", None, "s1")
    assert info.value.field == "agent_id"


def test_namespace_round_trips_through_its_string_form():
    for ns in [Namespace("alice"), Namespace("alice", "bot"), Namespace("alice", "bot", "s-1.2@x")]:
        assert Namespace.parse(str(ns)) == ns


BAD_FILTERS = [
    ("unknown operator", {"topic": {"$regex": "a.*"}}, "filters.topic"),
    ("logical operator", {"$or": [{"a": 1}]}, "filters"),
    ("namespace field", {"user_id": "bob"}, "filters.user_id"),
    ("reserved field", {"absorbed_by": "m1"}, "filters.absorbed_by"),
    ("$in needs a list", {"topic": {"$in": "travel"}}, "filters.topic"),
    ("empty $in", {"topic": {"$in": []}}, "filters.topic"),
    ("range on a string", {"n": {"$gt": "3"}}, "filters.n"),
    ("NaN value", {"n": {"$lt": float("nan")}}, "filters.n"),
    ("empty operator map", {"n": {}}, "filters.n"),
    ("dict value in $eq", {"n": {"$eq": {"a": 1}}}, "filters.n"),
]


@pytest.mark.parametrize("case,filters,field", BAD_FILTERS, ids=[c[0] for c in BAD_FILTERS])
def test_bad_filters_are_rejected_before_any_query(small_store, case, filters, field):
    with pytest.raises(InvalidFilterError) as info:
        small_store.search("episode", NS, filters=filters)
    assert info.value.field == field
    with pytest.raises(InvalidFilterError):
        small_store.list(NS, filters=filters)


def test_non_mapping_filter_is_rejected(small_store):
    with pytest.raises(InvalidFilterError):
        small_store.search("episode", NS, filters=[("topic", "a")])


@pytest.mark.parametrize("k", [0, -1, 1001, 2.5, True, "5"])
def test_search_k_out_of_range(small_store, k):
    with pytest.raises(ValidationError) as info:
        small_store.search("episode", NS, k=k)
    assert info.value.field == "k"


@pytest.mark.parametrize("query", ["", "   ", None, 5])
def test_bad_query_text(small_store, query):
    with pytest.raises(InvalidTextError) as info:
        small_store.search(query, NS)
    assert info.value.field == "query"


@pytest.mark.parametrize("bad_id", ["", "../../etc/passwd", "ep_../x", 12, None, "ep_" + "a" * 80])
def test_bad_episode_ids(small_store, bad_id):
    with pytest.raises(ValidationError) as info:
        small_store.get(bad_id, NS)
    assert info.value.field == "episode_id"


def test_update_with_bad_text_keeps_the_old_version(small_store):
    episode = small_store.list(NS)[0]
    with pytest.raises(InvalidTextError):
        small_store.update(episode.id, NS, text="")
    with pytest.raises(ValidationError):
        small_store.update(episode.id, NS)
    assert small_store.get(episode.id, NS).text == "an existing episode"
    assert len(small_store.history(episode.id, NS)) == 1


def test_delete_with_one_unknown_id_deletes_nothing(small_store):
    episode = small_store.list(NS)[0]
    with pytest.raises(NotFoundError):
        small_store.delete([episode.id, "ep_0123456789abcdef"], NS)
    assert small_store.count() == 1


def test_wrong_types_for_items_and_namespace(small_store):
    with pytest.raises(ValidationError):
        small_store.add_many("not a list")
    with pytest.raises(ValidationError) as info:
        small_store.add_many([NewEpisode("text", "alice/helper")])
    assert info.value.field == "items[0].namespace"
    with pytest.raises(ValidationError):
        small_store.add_many([{"text": "a dict, not a NewEpisode"}])
    assert small_store.count() == 1
