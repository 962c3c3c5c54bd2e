"""Forgetting removes episodes, their history and every parametric trace; changes during a run are honoured."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from agent_memory import AgentMemory, MemoryConfig
from agent_memory.backbone import Backbone
from agent_memory.consolidation import ConsolidationConfig, LoraSettings
from agent_memory.consolidation import consolidator as consolidator_module
from agent_memory.consolidation.consolidator import EpisodesChangedError
from agent_memory.errors import NotFoundError
from agent_memory.store import EpisodicStore, NewEpisode
from agent_memory.types import Namespace
from test_consolidation import FAST, T0, TURNS  # the same three turns and fast settings

MARIA, BOB = Namespace("maria", "companion", "s1"), Namespace("bob", "companion", "s1")


@pytest.fixture
def memory(tmp_path, embedder, tiny):
    return AgentMemory(EpisodicStore.in_memory(embedder), tiny, MemoryConfig(home=str(tmp_path / "home")))


def fill(memory, ns, texts=TURNS, session="s1"):
    ns = Namespace(ns.user_id, ns.agent_id, session)
    return memory.add_many([NewEpisode(t, ns, timestamp=T0 + timedelta(days=i), speaker="X") for i, t in enumerate(texts)])


def test_forgetting_an_episode_drops_its_module_and_retrains_the_rest(memory):
    maria = fill(memory, MARIA)
    bob = fill(memory, BOB)
    old = memory.consolidate("maria", FAST).modules[0]
    bobs_module = memory.consolidate("bob", FAST).modules[0]
    memory.update(maria[0].id, MARIA, metadata={"note": "kept a history"})
    report = memory.forget("maria", episode_ids=[maria[0].id], config=FAST)
    assert report.episodes == 1 and report.modules_dropped == [old.id] and report.episodes_released == 2
    assert len(report.modules_retrained) == 1
    new = memory.registry.get(report.modules_retrained[0])
    assert set(new.episode_ids) == {maria[1].id, maria[2].id}, "retrained without the forgotten episode"
    with pytest.raises(NotFoundError):
        memory.registry.get(old.id)
    assert not memory.registry.path(old).exists(), "the old module's weights are gone from disk"
    with pytest.raises(NotFoundError):
        memory.get(maria[0].id, "maria")
    with pytest.raises(NotFoundError):
        memory.history(maria[0].id, "maria")
    assert {e.absorbed_by for e in memory.list("maria")} == {new.id}
    # bob is untouched
    assert [e.id for e in memory.list("bob")] == [e.id for e in bob]
    assert [m.id for m in memory.registry.list("bob")] == [bobs_module.id]


def test_forgetting_a_session_without_retraining_leaves_the_rest_pending(memory):
    fill(memory, MARIA, TURNS[:2], session="s1")
    later = fill(memory, MARIA, TURNS[2:], session="s2")
    module = memory.consolidate("maria", FAST).modules[0]
    report = memory.forget("maria/companion/s1", retrain=False)
    assert report.episodes == 2 and report.modules_dropped == [module.id] and report.modules_retrained == []
    assert [e.id for e in memory.list("maria")] == [later[0].id]
    assert memory.store.pending(Namespace("maria"))[0].id == later[0].id
    assert memory.registry.list("maria") == []


def test_forgetting_a_user_touches_no_one_else(memory):
    fill(memory, MARIA)
    bob = fill(memory, BOB)
    memory.consolidate("maria", FAST)
    bobs = memory.consolidate("bob", FAST).modules[0]
    report = memory.forget("maria")
    assert report.episodes == 3 and len(report.modules_dropped) == 1
    assert memory.list("maria") == [] and memory.registry.list("maria") == []
    assert not (memory.registry.root / "maria").exists()
    assert [e.id for e in memory.list("bob")] == [e.id for e in bob]
    assert memory.registry.get(bobs.id).episode_ids == tuple(e.id for e in bob)


def test_unknown_or_foreign_ids_forget_nothing(memory):
    maria = fill(memory, MARIA)
    bob = fill(memory, BOB)
    module = memory.consolidate("maria", FAST).modules[0]
    for ids in ([maria[0].id, "ep_doesnotexist"], [maria[0].id, bob[0].id]):
        with pytest.raises(NotFoundError):
            memory.forget("maria", episode_ids=ids)
    assert len(memory.list("maria")) == 3 and memory.registry.get(module.id)
    assert len(memory.list("bob")) == 3


def test_a_corrupt_module_is_quarantined_and_retrieval_answers(memory):
    maria = fill(memory, MARIA)
    trusted = ConsolidationConfig(lora=FAST.lora, answer_tokens_per_rank=10_000, self_test_size=4, max_new_tokens=4,
                                  recall_floor=0.0)  # the tiny random model recalls nothing; trust it anyway
    module = memory.consolidate("maria", trusted).modules[0]
    (memory.registry.path(module) / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    answer = memory.answer("What did X say about Biscuit?", "maria", route="adapter")
    assert answer.route == "rag" and answer.modules == [] and "module unusable" in answer.reason
    quarantined = memory.registry.quarantined()
    assert len(quarantined) == 1 and module.id in quarantined[0].name
    assert "cannot be read" in (quarantined[0] / "QUARANTINED.txt").read_text()
    assert memory.registry.list("maria") == []
    assert {e.id for e in memory.store.pending(Namespace("maria"))} == {e.id for e in maria}, "pending again"


def test_an_episode_deleted_during_training_never_stays_in_a_module(memory, monkeypatch):
    maria = fill(memory, MARIA)
    real = consolidator_module.train_lora

    def train_then_delete(*args, **kwargs):
        result = real(*args, **kwargs)
        memory.delete(maria[1].id, "maria")  # another client forgets it while the module trains
        return result

    monkeypatch.setattr(consolidator_module, "train_lora", train_then_delete)
    with pytest.raises(EpisodesChangedError):
        memory.consolidate("maria", FAST)
    assert memory.registry.list("maria") == [] and not any(memory.registry.root.glob("maria/*/mod_*"))
    assert {e.id for e in memory.store.pending(Namespace("maria"))} == {maria[0].id, maria[2].id}
    monkeypatch.setattr(consolidator_module, "train_lora", real)
    assert memory.consolidate("maria", FAST).episodes_absorbed == 2


def test_an_episode_changed_during_training_stays_pending_with_its_new_text(memory, monkeypatch):
    maria = fill(memory, MARIA)
    real = consolidator_module.train_lora

    def train_then_update(*args, **kwargs):
        result = real(*args, **kwargs)
        memory.update(maria[2].id, "maria", text="My sister Ana switched to the viola.")
        return result

    monkeypatch.setattr(consolidator_module, "train_lora", train_then_update)
    module = memory.consolidate("maria", FAST).modules[0]
    absorbed = {e.id: e.absorbed_by for e in memory.list("maria")}
    assert absorbed == {maria[0].id: module.id, maria[1].id: module.id, maria[2].id: None}
    consolidator = consolidator_module.Consolidator(memory.store, memory.backbone, memory.registry, FAST)
    assert consolidator.reconcile(Namespace("maria")) == 0, "a crash-recovery pass does not re-mark it either"
    # forgetting the changed episode still drops the module that learned its old text
    report = memory.forget("maria", episode_ids=[maria[2].id], retrain=False)
    assert report.modules_dropped == [module.id]


def test_cli_forget(cli_runner, tmp_path, tiny_model_dir):
    cli = cli_runner(tmp_path / "home")
    cli.home.mkdir(parents=True)
    (cli.home / "config.json").write_text(json.dumps({"backbone": {"model": str(tiny_model_dir), "dtype": "float32"}}))
    ids = [json.loads(cli("add", "--user", "maria", "--json", t)[1])["id"] for t in TURNS]
    cli("add", "--user", "bob", "Bob collects stamps.")
    code, out, _ = cli("forget", "--user", "maria", "--ids", f"{ids[0]},{ids[1]}", "--json")
    assert code == 0 and json.loads(out)["episodes_deleted"] == 2
    code, out, _ = cli("list", "--user", "maria", "--json")
    assert [e["id"] for e in json.loads(out)] == [ids[2]]
    code, _, err = cli("forget", "--user", "maria", "--ids", "ep_nope")
    assert code == 2 and err.startswith("error:")
    code, out, _ = cli("forget", "--user", "maria", "--json")
    assert code == 0 and json.loads(out)["episodes_deleted"] == 1
    assert len(json.loads(cli("list", "--user", "bob", "--json")[1])) == 1


@pytest.mark.slow
def test_real_smollm2_forgotten_fact_falls_to_the_base_rate_and_the_other_survives(tmp_path, embedder):
    """Two facts, one module each (capacity set to one episode per module); forgetting one removes its recall."""
    backbone = Backbone.load()
    memory = AgentMemory(EpisodicStore.in_memory(embedder), backbone, MemoryConfig(home=str(tmp_path / "home")))
    dog, city = memory.add_many([NewEpisode(t, MARIA, timestamp=T0 + timedelta(days=i), speaker="Maria")
                                 for i, t in enumerate(TURNS[:2])])
    questions = {"dog": "What did Maria say about Biscuit?", "city": "What did Maria say about Toronto?"}
    prompts = {k: backbone.qa_prompt(q) for k, q in questions.items()}
    base = {k: backbone.complete([p], max_new_tokens=32)[0] for k, p in prompts.items()}
    assert "rescue dog named Biscuit" not in base["dog"] and "from Toronto" not in base["city"]
    config = ConsolidationConfig(lora=LoraSettings(rank=16, alpha=32, max_epochs=30), answer_tokens_per_rank=1)
    modules = memory.consolidate("maria", config).modules
    assert len(modules) == 2 and all(m.recall >= 0.8 for m in modules)

    def recalled(key):
        return memory.answer(questions[key], "maria", route="adapter").text

    assert "rescue dog named Biscuit" in recalled("dog") and "from Toronto" in recalled("city")
    memory.forget("maria", episode_ids=[dog.id])
    assert "rescue dog named Biscuit" not in recalled("dog"), "the forgotten fact is gone from the weights"
    assert "from Toronto" in recalled("city"), "the other fact survives"
