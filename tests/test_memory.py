"""AgentMemory facade: add, search, answer with retrieval (tiny backbone; real SmolLM2 in the slow test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_memory import AgentMemory, MemoryConfig, Namespace
from agent_memory.backbone import Backbone
from agent_memory.config import BackboneConfig, StoreConfig
from agent_memory.errors import ConfigError, ValidationError
from agent_memory.prompting import fit_episodes, format_episode

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def memory(tmp_path, embedder, tiny_model_dir):
    backbone = Backbone.load(BackboneConfig(model=str(tiny_model_dir), dtype="float32"))
    mem = AgentMemory.open(tmp_path / "home", embedder=embedder)
    mem._backbone = backbone
    return mem


def test_add_accepts_namespace_strings_and_objects(memory):
    a = memory.add("I moved to Lisbon.", "maria/companion/s1", speaker="Maria", timestamp="2023-05-02T10:15:00+01:00")
    b = memory.add("My dog is Biscuit.", Namespace("maria", "companion", "s2"))
    assert a.namespace == Namespace("maria", "companion", "s1")
    assert {e.id for e in memory.list("maria")} == {a.id, b.id}
    assert memory.search("dog", "maria/companion", k=1)[0].episode.id == b.id
    with pytest.raises(ValidationError):
        memory.add("x", 42)


def test_answer_puts_dated_evidence_in_the_prompt(memory):
    memory.add("I moved to Lisbon.", "maria/companion/s1", speaker="Maria", timestamp="2023-05-02T10:15:00+01:00")
    memory.add("My dog is Biscuit.", "maria/companion/s2", speaker="Maria", timestamp="2023-05-09T19:40:00+01:00")
    memory.add("Bob likes tea.", "bob")
    answer = memory.answer("where did maria move", "maria", k=2)
    assert answer.route == "rag"
    assert answer.evidence and {h.episode.namespace.user_id for h in answer.evidence} == {"maria"}
    assert answer.evidence[0].episode.text == "I moved to Lisbon."
    assert answer.prompt_tokens > 0
    assert set(answer.latency_ms) == {"retrieve", "recent", "route", "activate", "merge", "generate"}
    as_dict = answer.to_dict()
    assert {"answer", "route", "modules", "evidence", "reason", "prompt_tokens", "latency_ms"} <= set(as_dict)
    forced = memory.answer("where did maria move", "maria", k=2, route="rag")
    assert len(forced.evidence) == 2 and forced.decision.policy == "forced", "a forced route takes the top-k as is"
    assert memory.answer("anything", "nobody").route == "none"


def test_prompt_budget_drops_the_least_relevant_episodes(memory):
    episodes = [memory.add(f"fact number {i} " + "word " * 20, "maria") for i in range(5)]
    line_cost = len(format_episode(episodes[0]))
    kept = fit_episodes(episodes, budget_tokens=2 * line_cost + 2, count_tokens=len)
    assert kept == episodes[:2]


def test_info_reports_the_home(memory):
    memory.add("hello", "maria/companion/s1")
    info = memory.info()
    assert info["backend"] == "chroma-embedded" and info["episodes"] == 1
    assert info["users"] == ["maria"] and info["namespaces"] == ["maria/companion/s1"]
    assert info["embedding_dimension"] == 384


def test_config_round_trips_through_a_file(tmp_path):
    config = MemoryConfig(home=str(tmp_path), store=StoreConfig(max_text_chars=500), retrieval_k=3)
    path = tmp_path / "config.json"
    import json

    path.write_text(json.dumps(config.to_dict()))
    assert MemoryConfig.from_file(path) == config
    path.write_text(json.dumps({"retrieval_k": 0}))
    with pytest.raises(ConfigError) as info:
        MemoryConfig.from_file(path)
    assert info.value.field == "retrieval_k"
    path.write_text(json.dumps({"colour": "red"}))
    with pytest.raises(ConfigError):
        MemoryConfig.from_file(path)


@pytest.mark.slow
def test_demo_consolidates_and_routes_on_the_real_backbone(tmp_path):
    """The README's main job on the embedded SmolLM2: a consolidated fact comes back from the module's weights,
    the others through retrieval and the session's recent turns, each with its reason."""
    import sys

    sys.path.insert(0, str(EXAMPLES))
    try:
        import demo
    finally:
        sys.path.remove(str(EXAMPLES))
    lines: list[str] = []
    results = demo.run(tmp_path / "home", EXAMPLES / "conversation.json", echo=lines.append)
    assert any("nightly consolidation: module mod_" in line for line in lines)
    by_route = {r["expected_route"]: r for r in results[::-1]}  # the first question of each route
    assert [r["route"] for r in results] == [r["expected_route"] for r in results]
    adapter = by_route["adapter"]
    assert adapter["modules"] and adapter["evidence"] == [] and "May 2023" in adapter["answer"]
    # the same module's episode, asked about its content, is retrieved instead (the default policy)
    content = next(r for r in results if "name of the dog" in r["question"])
    assert content["route"] == "rag" and "ask for a date" in content["reason"] and "Biscuit" in content["answer"]
    assert "peanut" in by_route["rag"]["answer"].lower() and by_route["rag"]["evidence"]
    assert by_route["icl"]["recent"] and by_route["none"]["evidence"] == []
    assert all(r["reason"] for r in results)
    assert sum(r["expected"].lower() in r["answer"].lower() for r in results) >= 4
