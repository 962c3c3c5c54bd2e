"""Consolidation: QA synthesis, training, self-test, atomic commit, and what a failure leaves behind."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from agent_memory import AgentMemory, MemoryConfig
from agent_memory.backbone import Backbone
from agent_memory.config import BackboneConfig, RouterConfig
from agent_memory.consolidation import ConsolidationConfig, Consolidator, LoraSettings, TemplateSynthesizer
from agent_memory.consolidation.synthesis import NOT_DISCUSSED, keywords, spoken_date
from agent_memory.errors import NotFoundError, ValidationError
from agent_memory.registry import AdapterRegistry, BackboneMismatchError
from agent_memory.store import EpisodicStore, NewEpisode
from agent_memory.types import Namespace

NS = Namespace("maria", "companion", "s1")
T0 = datetime(2023, 5, 9, 19, 40, tzinfo=timezone.utc)
TURNS = [
    "Big news: on Saturday I adopted a rescue dog named Biscuit.",
    "I just moved to Lisbon from Toronto last week.",
    "My sister Ana plays the cello in an orchestra.",
]
FAST = ConsolidationConfig(
    lora=LoraSettings(rank=4, alpha=8, max_epochs=2), answer_tokens_per_rank=10_000, self_test_size=4, max_new_tokens=4
)


@pytest.fixture
def setup(tmp_path, embedder, tiny):
    store = EpisodicStore.in_memory(embedder)
    episodes = store.add_many(
        [NewEpisode(t, NS, timestamp=T0 + timedelta(days=i), speaker="Maria") for i, t in enumerate(TURNS)]
    )
    registry = AdapterRegistry(tmp_path / "modules")
    return store, registry, Consolidator(store, tiny, registry, FAST), episodes


def _has_lora(backbone) -> bool:
    return any("lora_" in name for name, _ in backbone.model.named_modules())


# -- synthesis ----------------------------------------------------------------------------------------
def test_templates_write_dates_out_and_cover_who_what_when(embedder):
    store = EpisodicStore.in_memory(embedder)
    e = store.add(TURNS[0], NS, timestamp=T0, speaker="Maria")
    examples = TemplateSynthesizer().synthesize([e])
    assert spoken_date(e) == "9 May 2023"
    by_q = {x.question: x for x in examples}
    assert by_q["What did Maria say about Biscuit?"].answer == TURNS[0]
    assert by_q["When did Maria mention Biscuit?"].answer == "On 9 May 2023."
    assert by_q["Who mentioned Biscuit?"].answer == "Maria"
    assert {x.kind for x in examples} == {"qa", "when", "who", "rewrite", "summary", "negative"}
    negatives = [x for x in examples if x.kind == "negative"]
    assert negatives and all(x.answer == NOT_DISCUSSED and x.episode_id is None for x in negatives)
    assert all(x.question.split("about ")[-1].rstrip("?").split()[-1].lower() not in TURNS[0].lower() for x in negatives)
    assert examples == TemplateSynthesizer().synthesize([e]), "deterministic"
    probes = TemplateSynthesizer().probes([e])
    assert probes and not {p.question for p in probes} & set(by_q), "probes are held out"


@pytest.mark.parametrize("text,expected", [
    ("Big news: on Saturday I adopted a rescue dog named Biscuit.", ["Saturday", "Biscuit"]),
    ("we met at 10:30 near Alfama", ["10:30", "Alfama"]),
    ("i love slow cooked beans", ["love", "slow", "cooked"]),
])
def test_keywords(text, expected):
    assert keywords(text) == expected


# -- the consolidation run ----------------------------------------------------------------------------
def test_run_commits_a_module_then_marks_its_episodes(setup, tiny):
    store, registry, consolidator, episodes = setup
    result = consolidator.run(Namespace("maria"))
    assert result.episodes_absorbed == 3 and len(result.modules) == 1
    info = result.modules[0]
    assert store.pending(Namespace("maria")) == []
    assert {store.get(e.id, NS).absorbed_by for e in episodes} == {info.id}
    assert registry.list("maria") == [info] and registry.get(info.id) == info
    assert set(info.episode_ids) == {e.id for e in episodes} and info.facts == 3
    assert set(info.examples_per_episode) == set(info.episode_ids) and info.examples > 3 * 4
    assert info.rank == 4 and info.params > 0 and info.train_tokens > 0 and len(info.centroid) == 384
    assert info.backbone_fingerprint == tiny.fingerprint and 0.0 <= info.recall <= 1.0
    assert info.weak == (info.recall < FAST.recall_floor)
    folder = registry.path(info)
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 4
    assert not _has_lora(tiny), "the backbone gets its plain layers back"
    assert consolidator.run(Namespace("maria")).modules == [], "nothing pending, nothing trained"


def test_module_loads_with_plain_peft_and_switches_back(setup, tiny, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, registry, consolidator, _ = setup
    info = consolidator.run(Namespace("maria")).modules[0]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    loaded = PeftModel.from_pretrained(base, str(registry.path(info)))
    assert any("lora_A" in n for n, _ in loaded.named_parameters())
    prompt = tiny.qa_prompt("what did maria say about dog")
    plain = tiny.complete([prompt], max_new_tokens=4)
    with registry.activated(tiny, info):
        assert _has_lora(tiny)
    assert not _has_lora(tiny) and tiny.complete([prompt], max_new_tokens=4) == plain


def test_failure_before_commit_marks_nothing_and_the_next_run_succeeds(setup, monkeypatch, tiny):
    store, registry, consolidator, episodes = setup
    real_commit = registry.commit

    def crash(staged, info):
        raise RuntimeError("disk full while committing")

    monkeypatch.setattr(registry, "commit", crash)
    with pytest.raises(RuntimeError):
        consolidator.run(Namespace("maria"))
    assert len(store.pending(Namespace("maria"))) == 3
    assert registry.list("maria") == []
    assert not any((registry.root / ".staging").iterdir()), "staged files are removed"
    assert not list(registry.root.glob("maria/*/mod_*"))
    assert not _has_lora(tiny)
    monkeypatch.setattr(registry, "commit", real_commit)
    result = consolidator.run(Namespace("maria"))
    assert result.episodes_absorbed == 3 and store.pending(Namespace("maria")) == []


def test_crash_between_commit_and_marking_is_rolled_forward(setup, monkeypatch):
    store, registry, consolidator, episodes = setup
    real_mark = store.mark_absorbed

    def crash(*args, **kwargs):
        raise RuntimeError("killed after commit")

    monkeypatch.setattr(store, "mark_absorbed", crash)
    with pytest.raises(RuntimeError):
        consolidator.run(Namespace("maria"))
    assert len(registry.list("maria")) == 1 and len(store.pending(Namespace("maria"))) == 3
    monkeypatch.setattr(store, "mark_absorbed", real_mark)
    result = consolidator.run(Namespace("maria"))
    assert result.reconciled == 3 and result.modules == [], "no second module for the same episodes"
    module_id = registry.list("maria")[0].id
    assert {store.get(e.id, NS).absorbed_by for e in episodes} == {module_id}


def test_load_over_capacity_opens_more_modules(tmp_path, embedder, tiny):
    store = EpisodicStore.in_memory(embedder)
    episodes = store.add_many([NewEpisode(t, NS, timestamp=T0 + timedelta(days=i), speaker="Maria") for i, t in enumerate(TURNS)])
    tight = ConsolidationConfig(lora=FAST.lora, answer_tokens_per_rank=1, self_test_size=2, max_new_tokens=2)
    consolidator = Consolidator(store, tiny, AdapterRegistry(tmp_path / "m"), tight)
    assert len(consolidator.plan(episodes)) == 3
    result = consolidator.run(Namespace("maria"))
    assert len(result.modules) == 3
    assert sorted(i for m in result.modules for i in m.episode_ids) == sorted(e.id for e in episodes)


def test_modules_from_another_backbone_are_refused(setup, tiny_model_dir):
    _, registry, consolidator, _ = setup
    info = consolidator.run(Namespace("maria")).modules[0]
    other = Backbone.load(BackboneConfig(model=str(tiny_model_dir), dtype="float32"))
    import torch

    with torch.no_grad():
        next(other.model.parameters()).mul_(1.5)
    other._fingerprint = None
    with pytest.raises(BackboneMismatchError, match="trained on"):
        with registry.activated(other, info):
            pass


def test_registry_sweep_delete_and_bad_ids(setup):
    _, registry, consolidator, _ = setup
    info = consolidator.run(Namespace("maria")).modules[0]
    orphan = registry.root / "maria" / "companion" / "mod_orphan0000"
    orphan.mkdir()
    (registry.root / ".staging" / "mod-leftover").mkdir(parents=True)
    # killed between the rename and the first manifest write of an agent: a module beside no manifest
    first = registry.root / "maria" / "planner" / "mod_first0000000"
    first.mkdir(parents=True)
    removed = registry.sweep()
    assert orphan in removed and not orphan.exists() and registry.path(info).is_dir()
    assert first in removed and not first.exists()
    assert not list((registry.root / "maria" / "companion").glob(".manifest-*")), "no temp manifests"
    with pytest.raises(ValidationError):
        registry.get("../../etc")
    registry.delete(info.id)
    assert registry.list("maria") == [] and not registry.path(info).exists()
    with pytest.raises(NotFoundError):
        registry.get(info.id)


@pytest.mark.slow
def test_real_smollm2_module_answers_from_its_weights(tmp_path, embedder):
    """The done-when of consolidation: the module recalls, with no episode in the prompt, what the base cannot."""
    store = EpisodicStore.in_memory(embedder)
    store.add_many([NewEpisode(t, NS, timestamp=T0 + timedelta(days=i), speaker="Maria") for i, t in enumerate(TURNS[:2])])
    backbone = Backbone.load()
    registry = AdapterRegistry(tmp_path / "modules")
    config = ConsolidationConfig(lora=LoraSettings(rank=16, alpha=32, max_epochs=30))
    questions = ["What did Maria say about Biscuit?", "When did Maria mention Biscuit?"]
    prompts = [backbone.qa_prompt(q) for q in questions]
    base = backbone.complete(prompts, max_new_tokens=32)
    assert "rescue dog named Biscuit" not in base[0] and "9 May 2023" not in base[1]
    info = Consolidator(store, backbone, registry, config).run(Namespace("maria")).modules[0]
    assert info.recall >= 0.8 and not info.weak
    with registry.activated(backbone, info):
        recalled = backbone.complete(prompts, max_new_tokens=32)
    assert "rescue dog named Biscuit" in recalled[0]
    assert "9 May 2023" in recalled[1]
    assert backbone.complete(prompts, max_new_tokens=32) == base, "deactivated: the base model again"
    # the router answers the consolidated fact via the adapter route, with no episode text in the prompt
    router = RouterConfig(policy_params={"trust_recall": 0.8})
    memory = AgentMemory(store, backbone, MemoryConfig(home=str(tmp_path), router=router), registry)
    answer = memory.answer(questions[1], Namespace("maria", "companion", "later"))
    assert answer.route == "adapter" and answer.modules == [info.id] and answer.evidence == []
    assert answer.prompt_tokens == backbone.count_tokens(prompts[1])
    assert "9 May 2023" in answer.text
    assert backbone.complete(prompts, max_new_tokens=32) == base, "the merge is undone after answering"


def test_modules_stay_in_their_namespace(tmp_path, embedder, tiny):
    store = EpisodicStore.in_memory(embedder)
    store.add("Alice keeps bees in Porto.", Namespace("alice", "bot"), speaker="Alice")
    store.add("Bob collects stamps from Peru.", Namespace("bob", "bot"), speaker="Bob")
    registry = AdapterRegistry(tmp_path / "modules")
    consolidator = Consolidator(store, tiny, registry, FAST)
    consolidator.run(Namespace("alice"))
    assert [m.user_id for m in registry.list("alice")] == ["alice"]
    assert registry.list("bob") == [] and len(store.pending(Namespace("bob"))) == 1, "bob's episodes untouched"
    consolidator.run(Namespace("bob"))
    alice, bob = registry.list("alice")[0], registry.list("bob")[0]
    assert set(alice.episode_ids).isdisjoint(bob.episode_ids)


@pytest.mark.parametrize("pred,gold,expected", [
    ("On 9 May 2023.", "on 9 may 2023", 1.0),
    ("Biscuit", "a dog named Biscuit", 0.4),
    ("", "x", 0.0),
    ("cat", "dog", 0.0),
])
def test_token_f1(pred, gold, expected):
    from agent_memory.consolidation.consolidator import token_f1

    assert token_f1(pred, gold) == pytest.approx(expected)


def test_a_failed_training_leaves_no_lora_layers_on_the_backbone(setup, tiny, monkeypatch):
    store, registry, consolidator, _ = setup
    from agent_memory.consolidation import trainer

    def broken(*args, **kwargs):
        raise RuntimeError("injected: out of memory in the backward pass")

    monkeypatch.setattr(trainer, "_answer_loss", broken)
    with pytest.raises(RuntimeError, match="injected"):
        consolidator.run(Namespace("maria"))
    assert not _has_lora(tiny) and registry.list("maria") == [] and len(store.pending(Namespace("maria"))) == 3


def test_manual_consolidation_refuses_while_the_home_is_locked(tmp_path, embedder, tiny):
    from agent_memory.consolidation import HomeLock
    from agent_memory.memory import ConsolidationBusyError

    memory = AgentMemory(EpisodicStore.in_memory(embedder), tiny, MemoryConfig(home=str(tmp_path / "home")))
    memory.add(TURNS[0], NS, speaker="Maria")
    with HomeLock(tmp_path / "home"):
        with pytest.raises(ConsolidationBusyError, match=f"pid {__import__('os').getpid()}"):
            memory.consolidate("maria", FAST)
    assert memory.registry.list("maria") == [] and len(memory.store.pending(Namespace("maria"))) == 1
    assert memory.consolidate("maria", FAST).episodes_absorbed == 1, "free again: the run goes through"


def test_bf16_backbone_trains_bf16_factors_with_fp32_masters_and_eager_attention(tiny_model_dir):
    from agent_memory.consolidation import QAExample, train_lora

    backbone = Backbone.load(BackboneConfig(model=str(tiny_model_dir), dtype="bfloat16"))
    before = backbone.model.config._attn_implementation
    during: list[tuple[str, set]] = []

    def look(epoch, loss, accuracy):
        dtypes = {p.dtype for n, p in backbone.model.named_parameters() if "lora_" in n}
        during.append((backbone.model.config._attn_implementation, dtypes))

    examples = [QAExample("where did maria move", "lisbon"), QAExample("what is the dog name", "maria")]
    settings = LoraSettings(rank=4, alpha=8, max_epochs=20, learning_rate=0.01, stop_at_accuracy=1.0)
    model, report = train_lora(backbone, examples, settings, "default", on_epoch=look)
    import torch

    expected = "eager" if before == "sdpa" else before
    assert during[0] == (expected, {torch.bfloat16}), "factors compute in the backbone's dtype while training"
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert {p.dtype for p in lora.values()} == {torch.float32}, "trained factors handed back in fp32"
    assert all(p.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n), "the masters' updates reached the model"
    assert report.history[-1]["loss"] < report.history[0]["loss"]
    assert backbone.model.config._attn_implementation == before, "attention restored after training"
    assert next(p for n, p in model.named_parameters() if "lora_" not in n).dtype == torch.bfloat16
    backbone.model = model.unload()


def test_fused_lora_updates_compute_what_peft_computes_and_give_the_layers_back(tiny):
    import torch
    from peft import get_peft_model
    from peft.tuners.lora import Linear as LoraLinear

    from agent_memory.consolidation.trainer import _fused_lora_updates, lora_config

    torch.manual_seed(0)
    model = get_peft_model(tiny.model, lora_config(LoraSettings(rank=4, alpha=8)), adapter_name="m")
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    for layer in layers:  # peft starts B at zero; a random B makes the update visible
        torch.nn.init.normal_(layer.lora_B["m"].weight, std=0.5)
    ids = torch.tensor([[1, 5, 7, 9, 3], [2, 4, 6, 8, 3]])

    def logits_and_grads():
        model.zero_grad()
        logits = model(input_ids=ids).logits
        logits.square().mean().backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    peft_logits, peft_grads = logits_and_grads()
    with _fused_lora_updates(model, "m") as switched:
        assert switched == len(layers) > 0
        assert all("forward" in layer.__dict__ for layer in layers)
        fused_logits, fused_grads = logits_and_grads()
    assert torch.allclose(fused_logits, peft_logits, atol=1e-5)
    assert all(torch.allclose(f, p, atol=1e-5) for f, p in zip(fused_grads, peft_grads))
    assert not any("forward" in layer.__dict__ for layer in layers), "peft's forward given back"

    with model.disable_adapter():
        base_logits = model(input_ids=ids).logits.detach()
    assert not torch.allclose(base_logits, peft_logits, atol=1e-3), "the adapter changes the output"
    for layer in layers:
        layer.scaling["m"] = 0.0
    with torch.no_grad(), _fused_lora_updates(model, "m"):
        assert torch.allclose(model(input_ids=ids).logits, base_logits, atol=1e-5), "the fused path scales the update"
    tiny.model = model.unload()
