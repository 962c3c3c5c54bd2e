"""Training QA written by a LangChain chat model: request, checks, failure, and a real module that learns it."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from agent_memory import AgentMemory, MemoryConfig
from agent_memory.backbone import Backbone
from agent_memory.consolidation import ConsolidationConfig, Consolidator, LoraSettings, TemplateSynthesizer
from agent_memory.consolidation.generated import ChatModelSynthesizer, SynthesisError, grounding
from agent_memory.errors import ConfigError
from agent_memory.registry import AdapterRegistry
from agent_memory.store import EpisodicStore, NewEpisode
from agent_memory.types import Namespace

NS = Namespace("maria", "companion", "s1")
T0 = datetime(2023, 5, 9, 19, 40, tzinfo=timezone.utc)
TURNS = ["Big news: on Saturday I adopted a rescue dog named Biscuit.", "I just moved to Lisbon from Toronto last week."]


class ScriptedChatModel(BaseChatModel):
    """Stands in for the user's stronger LLM (none is reachable offline): replies with a script, records requests."""

    reply: str = ""
    error: str | None = None
    requests: list = []

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        self.requests.append(messages)
        if self.error:
            raise ConnectionError(self.error)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self.reply))])


def lines(*pairs: dict) -> str:
    return "Here are the questions:\n" + "\n".join(json.dumps(p) for p in pairs)


NATURAL = [
    {"turn": 1, "question": "What is the name of Maria's dog?", "answer": "Biscuit"},
    {"turn": 2, "question": "Which city did Maria move to", "answer": "Lisbon"},
]


@pytest.fixture
def episodes(embedder):
    store = EpisodicStore.in_memory(embedder)
    added = store.add_many([NewEpisode(t, NS, timestamp=T0 + timedelta(days=i), speaker="Maria")
                            for i, t in enumerate(TURNS)])
    return store, added


def test_request_shows_numbered_dated_turns_and_pairs_are_added_to_templates(episodes):
    _, added = episodes
    model = ScriptedChatModel(reply=lines(*NATURAL), requests=[])
    synth = ChatModelSynthesizer(model, questions_per_episode=3)
    examples = synth.synthesize(added)
    request = model.requests[0][-1].content
    assert "[1] (9 May 2023) Maria: Big news" in request and "[2] (10 May 2023) Maria: I just moved" in request
    assert "up to 3 different questions" in model.requests[0][0].content
    generated = [e for e in examples if e.kind == "generated"]
    assert [(e.question, e.answer, e.episode_id) for e in generated] == [
        ("What is the name of Maria's dog?", "Biscuit", added[0].id),
        ("Which city did Maria move to?", "Lisbon", added[1].id),
    ]
    assert examples[: len(examples) - 2] == TemplateSynthesizer().synthesize(added), "templates kept, first"
    assert synth.probes(added) == TemplateSynthesizer().probes(added)
    assert synth.stats.calls == 1 and synth.stats.accepted == 2 and synth.stats.rejected == {}


@pytest.mark.parametrize(
    "pair, reason",
    [
        ('{"turn": 1, "question": "What breed is the dog?", "answer": "A golden retriever"}', "answer not grounded in the turn"),
        ('{"turn": 3, "question": "Who?", "answer": "Maria"}', "no such turn"),
        ('{"turn": "x", "question": "Who?", "answer": "Maria"}', "no such turn"),
        ('{"turn": 1, "question": "", "answer": "Biscuit"}', "missing question or answer"),
        ('{"turn": 1, "question": "Dog?"}', "missing question or answer"),
        ('{"turn": 1, "question": "Dog?", "answer": "' + "Biscuit " * 31 + '"}', "answer too long"),
        ("{turn: 1, question: Dog?}", "not JSON"),
    ],
)
def test_malformed_or_ungrounded_pairs_are_rejected_and_counted(episodes, pair, reason):
    _, added = episodes
    synth = ChatModelSynthesizer(ScriptedChatModel(requests=[]))
    assert synth.parse(pair + "\n" + json.dumps(NATURAL[0]), added) == synth.parse(json.dumps(NATURAL[0]), added)[:1]
    assert synth.stats.rejected == {reason: 1}


def test_duplicates_and_pairs_over_quota_are_dropped(episodes):
    _, added = episodes
    synth = ChatModelSynthesizer(ScriptedChatModel(requests=[]), questions_per_episode=2)
    reply = lines(NATURAL[0], NATURAL[0],
                  {"turn": 1, "question": "What kind of dog did Maria adopt?", "answer": "A rescue dog"},
                  {"turn": 1, "question": "When did Maria adopt Biscuit?", "answer": "On Saturday"})
    kept = synth.parse(reply, added)
    assert [e.question for e in kept] == ["What is the name of Maria's dog?", "What kind of dog did Maria adopt?"]
    assert synth.stats.rejected == {"duplicate or over quota": 2}


@pytest.mark.parametrize("answer, source, expected", [
    ("Biscuit", "a dog named Biscuit", 1.0), ("the dog", "a dog", 1.0), ("a golden retriever", "a dog", 0.0),
    ("On 9 May 2023", "9 May 2023", 1.0), ("yes", "anything", 1.0),
])
def test_grounding(answer, source, expected):
    assert grounding(answer, source) == expected


@pytest.mark.parametrize("kwargs, field", [
    ({"chat_model": object()}, "chat_model"), ({"questions_per_episode": 0}, "questions_per_episode"),
    ({"episodes_per_call": True}, "episodes_per_call"), ({"min_grounding": 1.5}, "min_grounding"),
])
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ChatModelSynthesizer(**{"chat_model": ScriptedChatModel(requests=[]), **kwargs})


def test_a_failing_chat_model_consolidates_and_marks_nothing(tmp_path, episodes, tiny):
    store, _ = episodes
    failing = ScriptedChatModel(error="connection refused", requests=[])
    config = ConsolidationConfig(lora=LoraSettings(rank=4, alpha=8, max_epochs=1), self_test_size=2, max_new_tokens=4)
    memory = AgentMemory(store, tiny, MemoryConfig(home=str(tmp_path)), synthesizer=ChatModelSynthesizer(failing))
    with pytest.raises(SynthesisError, match="connection refused.*run again"):
        memory.consolidate("maria", config)
    assert len(store.pending(Namespace("maria"))) == 2 and memory.registry.list("maria") == []
    failing.error = None
    failing.reply = lines(*NATURAL)
    result = memory.consolidate("maria", config)
    assert result.episodes_absorbed == 2 and store.pending(Namespace("maria")) == []
    counts = result.modules[0].examples_per_episode
    template_counts = TemplateSynthesizer().synthesize(store.list(NS))
    assert sum(counts.values()) == sum(1 for e in template_counts if e.episode_id) + 2, "generated pairs counted"


@pytest.mark.slow
def test_real_smollm2_learns_natural_questions_from_generated_qa(tmp_path, episodes):
    """Template QA alone does not teach "What is the name of Maria's dog?"; a chat model's natural QA does."""
    store, _ = episodes
    backbone = Backbone.load()
    questions = [p["question"] for p in NATURAL]
    prompts = [backbone.qa_prompt(q if q.endswith("?") else q + "?") for q in questions]
    base = backbone.complete(prompts, max_new_tokens=16)
    assert "Biscuit" not in base[0] and "Lisbon" not in base[1]
    reply = lines(*NATURAL, {"turn": 1, "question": "What breed is Biscuit?", "answer": "A golden retriever"})
    synth = ChatModelSynthesizer(ScriptedChatModel(reply=reply, requests=[]))
    registry = AdapterRegistry(tmp_path / "modules")
    config = ConsolidationConfig(lora=LoraSettings(rank=16, alpha=32, max_epochs=30))
    info = Consolidator(store, backbone, registry, config, synth).run(Namespace("maria")).modules[0]
    assert synth.stats.calls == 1, "planning and training share one request"
    assert synth.stats.accepted == 2 and synth.stats.rejected == {"answer not grounded in the turn": 1}
    with registry.activated(backbone, info):
        recalled = backbone.complete(prompts, max_new_tokens=16)
    assert "Biscuit" in recalled[0] and "Lisbon" in recalled[1]
