"""Bad input across the API and the CLI: a clear AgentMemoryError naming the problem, and nothing written.

tests/test_validation.py covers the store's field checks one by one; this file goes through the
public faces (AgentMemory, configs, registry, adapters, CLI) with a home that already holds data,
and checks after every case that the home is byte-for-byte what it was.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import pytest

from agent_memory import AgentMemory, MemoryConfig
from agent_memory.backbone import Backbone
from agent_memory.config import BackboneConfig, RouterConfig, StoreConfig
from agent_memory.consolidation import ConsolidationConfig, LoraSettings, ScheduleConfig
from agent_memory.errors import AgentMemoryError
from agent_memory.types import Namespace

FAST = ConsolidationConfig(lora=LoraSettings(rank=4, alpha=8, max_epochs=1), answer_tokens_per_rank=10_000,
                           self_test_size=2, max_new_tokens=2)


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model_dir):
    """A home holding two users' episodes and one module, shared by every case (none may change it)."""
    home = tmp_path_factory.mktemp("bad-input") / "home"
    home.mkdir()
    (home / "config.json").write_text(json.dumps({"backbone": {"model": str(tiny_model_dir), "dtype": "float32"}}))
    memory = AgentMemory.open(home)
    memory.add("My dog is called Biscuit.", "maria/companion/s1", timestamp="2023-05-02T10:00:00+00:00")
    memory.add("Bob collects stamps.", "bob")
    memory.consolidate("maria", FAST)
    memory.add("Pending: I moved to Lisbon.", "maria/companion/s2")
    return home


@pytest.fixture(scope="module")
def memory(home):
    return AgentMemory.open(home)


def snapshot(home: Path) -> dict[str, str]:
    """Every file under the home with its content hash (Chroma's files included)."""
    out = {}
    for p in sorted(home.rglob("*")):
        if p.is_file() and p.suffix not in {".lock"} and "schedule" not in p.parts:
            out[str(p.relative_to(home))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def episodes(memory) -> list[tuple]:
    return sorted((e.id, e.text, e.absorbed_by, e.version) for u in ("maria", "bob") for e in memory.list(u))


def module_id(memory) -> str:
    return memory.registry.list("maria")[0].id


API_CASES = {
    "empty text": (lambda m: m.add("", "maria"), "text"),
    "whitespace text": (lambda m: m.add(" \n\t ", "maria"), "text"),
    "huge text": (lambda m: m.add("x" * 200_000, "maria"), "text"),
    "lone surrogate": (lambda m: m.add("bad \ud800 text", "maria"), "text"),
    "non-string text": (lambda m: m.add(12345, "maria"), "text"),
    "naive datetime": (lambda m: m.add("ok", "maria", timestamp=datetime(2023, 1, 1)), "timestamp"),
    "NaN timestamp": (lambda m: m.add("ok", "maria", timestamp=float("nan")), "timestamp"),
    "unparseable timestamp": (lambda m: m.add("ok", "maria", timestamp="yesterday-ish"), "timestamp"),
    "path traversal in user": (lambda m: m.add("ok", "../etc/s1"), "user_id"),
    "path traversal in agent": (lambda m: m.add("ok", Namespace("maria", "..", "s1")), "agent_id"),
    "too many namespace parts": (lambda m: m.add("ok", "a/b/c/d"), "namespace"),
    "session without agent": (lambda m: m.add("ok", Namespace("maria", None, "s1")), "agent_id"),
    "nested metadata": (lambda m: m.add("ok", "maria", metadata={"a": {"b": 1}}), "metadata"),
    "non-string metadata key": (lambda m: m.add("ok", "maria", metadata={1: "x"}), "metadata"),
    "unknown filter operator": (lambda m: m.search("dog", "maria", filters={"x": {"$regex": "a"}}), "filters"),
    "malformed filter": (lambda m: m.search("dog", "maria", filters={"$and": "x"}), "filters"),
    "k = 0": (lambda m: m.search("dog", "maria", k=0), "k"),
    "k as string": (lambda m: m.search("dog", "maria", k="5"), "k"),
    "empty query": (lambda m: m.search("", "maria"), "query"),
    "unknown route": (lambda m: m.answer("dog?", "maria", route="telepathy"), "route"),
    "max_new_tokens = 0": (lambda m: m.answer("dog?", "maria", max_new_tokens=0), "max_new_tokens"),
    "forget unknown id": (lambda m: m.forget("maria", episode_ids=["ep_doesnotexist"]), "ep_doesnotexist"),
    "forget another user's id": (lambda m: m.forget("bob", episode_ids=[m.list("maria")[0].id]), "bob"),
    "module id traversal": (lambda m: m.delete_module("../../etc/passwd"), "module_id"),
    "module id with slash": (lambda m: m.registry.get("mod_abc/../../x"), "module_id"),
    "unknown module": (lambda m: m.delete_module("mod_0000000000000000"), "mod_0000000000000000"),
    "update with nothing": (lambda m: m.update(m.list("maria")[0].id, "maria"), "text"),
    "update foreign episode": (lambda m: m.update(m.list("bob")[0].id, "maria", text="x"), "maria"),
    "retrieval_k = 0": (lambda m: MemoryConfig(retrieval_k=0), "retrieval_k"),
    "router min_score out of range": (lambda m: RouterConfig(min_score=5), "min_score"),
    "router unknown policy": (lambda m: RouterConfig(policy="oracle"), "policy"),
    "store prefix with slash": (lambda m: StoreConfig(collection_prefix="a/b"), "collection_prefix"),
    "missing model folder": (lambda m: Backbone.load(BackboneConfig(model="/no/such/model")), "does not exist"),
    "bad dtype": (lambda m: BackboneConfig(dtype="float8"), "dtype"),
    "recall floor out of range": (lambda m: ConsolidationConfig(recall_floor=2.0), "recall_floor"),
    "rank 0": (lambda m: LoraSettings(rank=0), "rank"),
    "no target modules": (lambda m: LoraSettings(target_modules=LoraSettings.parse_target_modules(" , ")), "target_modules"),
    "bad cron": (lambda m: ScheduleConfig(cron="every night please"), "cron"),
    "module from another backbone": (lambda m: _other_backbone_load(m), "trained on"),
}


def _other_backbone_load(memory):
    from agent_memory.adapters import ResidentAdapters

    other = Backbone.load(BackboneConfig(model=str(Path(memory.config.backbone.model)), dtype="float32"))
    other._fingerprint = "0" * 16  # as if its weights were different
    ResidentAdapters(other, memory.registry).load(memory.registry.list("maria")[0])


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_api_rejects_and_writes_nothing(case, memory, home):
    call, named = API_CASES[case]
    before, rows = snapshot(home), episodes(memory)
    with pytest.raises(AgentMemoryError) as info:
        call(memory)
    assert named in str(info.value), f"the error names {named!r}: {info.value}"
    assert episodes(memory) == rows and snapshot(home) == before, "nothing written"


CLI_CASES = {
    "add: traversal user": (["add", "--user", "../x", "hello"], "user_id"),
    "add: naive --at": (["add", "--user", "maria", "--at", "2023-05-01T10:00:00", "hello"], "timestamp"),
    "add: garbage --at": (["add", "--user", "maria", "--at", "soon", "hello"], "timestamp"),
    "add: empty text": (["add", "--user", "maria", ""], "text"),
    "add: bad role": (["add", "--user", "maria", "--role", "wizard", "hello"], "role"),
    "search: k 0": (["search", "--user", "maria", "-k", "0", "dog"], "k"),
    "list: space in user": (["list", "--user", "a b"], "user_id"),
    "get: traversal id": (["get", "ep_../../x"], "episode"),
    "modules show: traversal": (["modules", "show", "../../etc/passwd"], "module_id"),
    "modules delete: unknown": (["modules", "delete", "mod_0000000000000000"], "mod_0000000000000000"),
    "ask: unknown route": (["ask", "--user", "maria", "--route", "psychic", "dog?"], "route"),
    "forget: unknown id": (["forget", "--user", "maria", "--ids", "ep_nope"], "ep_nope"),
    "consolidate: rank 0": (["consolidate", "--user", "maria", "--rank", "0"], "rank"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_rejects_with_one_line_and_writes_nothing(case, cli_runner, memory, home):
    args, named = CLI_CASES[case]
    before, rows = snapshot(home), episodes(memory)
    code, out, err = cli_runner(home)(*args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert named in err
    assert episodes(memory) == rows and snapshot(home) == before, "nothing written"


def test_the_cases_count():
    assert len(API_CASES) + len(CLI_CASES) >= 30


def test_the_snapshot_sees_a_write(tmp_path, embedder):
    other = AgentMemory.open(tmp_path / "other", embedder=embedder)
    other.add("first", "zoe")
    before = snapshot(tmp_path / "other")
    other.add("second", "zoe")
    assert snapshot(tmp_path / "other") != before
