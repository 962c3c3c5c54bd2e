"""LangChain integration: LangChain's standard suites (langchain-tests) plus behaviour and isolation tests.

Everything runs on the tiny random backbone and the real bundled embedder; the real SmolLM2 runs in
tests/test_integrations.py (the examples).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests, RetrieversIntegrationTests, ToolsIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests, ToolsUnitTests
from pydantic import ValidationError as PydanticValidationError

from agent_memory import AgentMemory, EpisodicStore, MemoryConfig, NotFoundError, ValidationError
from agent_memory.backbone import Backbone
from agent_memory.config import BackboneConfig
from agent_memory.integrations.langchain import (
    AgentMemoryChatModel,
    AgentMemoryRecorder,
    AgentMemoryRetriever,
    ForgetMemoryTool,
    SaveMemoryTool,
    SearchMemoryTool,
    memory_tools,
)

# langchain-tests' async tests are plain ``async def``: mark the module (the mark is a no-op on sync tests)
pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:The test <Function .*> is marked with '@pytest.mark.asyncio' but it is not"),
]

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)
FACTS = {
    "ana": ["My dog is called Biscuit.", "I moved to Lisbon last spring.", "I work as a nurse at night."],
    "ben": ["My cat is called Pepper.", "I live in Toronto.", "I am allergic to peanuts."],
}


def tiny_memory(model_dir, embedder, home, max_new_tokens: int = 8) -> AgentMemory:
    """A memory on the in-memory store and the tiny backbone (short answers keep the suites fast)."""
    config = MemoryConfig(home=str(home), backbone=BackboneConfig(model=str(model_dir), dtype="float32",
                                                                  max_new_tokens=max_new_tokens))
    return AgentMemory(EpisodicStore.in_memory(embedder), Backbone.load(config.backbone), config)


def seed(memory: AgentMemory) -> dict[str, list[str]]:
    """Each user's facts in session s1 (a day apart); returns the ids per user."""
    ids: dict[str, list[str]] = {}
    for user, texts in FACTS.items():
        ids[user] = [memory.add(t, f"{user}/helper/s1", speaker=user.title(), timestamp=T0 + timedelta(days=n)).id
                     for n, t in enumerate(texts)]
    return ids


@pytest.fixture(scope="module")
def shared_memory(tiny_model_dir, embedder, tmp_path_factory) -> AgentMemory:
    memory = tiny_memory(tiny_model_dir, embedder, tmp_path_factory.mktemp("lc-home"))
    seed(memory)
    return memory


@pytest.fixture
def memory(tiny_model_dir, embedder, tmp_path) -> AgentMemory:
    return tiny_memory(tiny_model_dir, embedder, tmp_path / "home")


class _SharedMemory:
    """The standard suites build their objects from properties: hand them the module's memory."""

    memory: AgentMemory

    @pytest.fixture(autouse=True)
    def _bind(self, shared_memory):
        type(self).memory = shared_memory


# -- LangChain's standard suites ------------------------------------------------------------------
class _ChatModel(_SharedMemory):
    """What both chat-model suites build: the chat model over the module's memory, in a second session."""

    @property
    def chat_model_class(self):
        return AgentMemoryChatModel

    @property
    def chat_model_params(self):
        return {"memory": self.memory, "namespace": "ana/helper/s2"}


class TestChatModelUnit(_ChatModel, ChatModelUnitTests):
    pass


class TestChatModelStandard(_ChatModel, ChatModelIntegrationTests):
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False


class TestRetrieverStandard(_SharedMemory, RetrieversIntegrationTests):
    @property
    def retriever_constructor(self):
        return AgentMemoryRetriever

    @property
    def retriever_constructor_params(self):
        return {"memory": self.memory, "namespace": "ana"}

    @property
    def retriever_query_example(self) -> str:
        return "what is my dog called?"


class _ToolSuite(_SharedMemory):
    tool_class: type
    example: dict

    @property
    def tool_constructor(self):
        return self.tool_class

    @property
    def tool_constructor_params(self):
        return {"memory": self.memory, "namespace": "ana/helper/tools"}

    @property
    def tool_invoke_params_example(self):
        return self.example


class TestSaveToolUnit(_ToolSuite, ToolsUnitTests):
    tool_class, example = SaveMemoryTool, {"text": "I like green tea."}


class TestSaveToolStandard(_ToolSuite, ToolsIntegrationTests):
    tool_class, example = SaveMemoryTool, {"text": "I like green tea."}


class TestSearchToolUnit(_ToolSuite, ToolsUnitTests):
    tool_class, example = SearchMemoryTool, {"query": "pets", "k": 2}


class TestSearchToolStandard(_ToolSuite, ToolsIntegrationTests):
    tool_class, example = SearchMemoryTool, {"query": "pets", "k": 2}


class _ForgetSuite(_ToolSuite):
    tool_class = ForgetMemoryTool

    @property
    def tool_invoke_params_example(self):
        """A real call each time: an episode to forget is added first."""
        return {"ids": [self.memory.add("a passing remark", "ana/helper/tools").id]}


class TestForgetToolUnit(_ForgetSuite, ToolsUnitTests):
    pass


class TestForgetToolStandard(_ForgetSuite, ToolsIntegrationTests):
    pass


# -- chat model -----------------------------------------------------------------------------------
def test_chat_model_answers_from_another_session_and_reports_the_route(memory):
    ids = seed(memory)
    chat = AgentMemoryChatModel(memory=memory, namespace="ana/helper/s2", route="rag")
    reply = chat.invoke([SystemMessage("be brief"), HumanMessage("hello"), AIMessage("hi"),
                         HumanMessage("What is my dog called?")])
    meta = reply.response_metadata
    assert meta["route"] == "rag" and meta["modules"] == [] and "requested" in meta["reason"]
    assert ids["ana"][0] in meta["evidence"]  # the fact from session s1 was in the prompt
    assert meta["model_name"] == memory.backbone.name
    assert reply.usage_metadata["input_tokens"] == meta["prompt_tokens"] > 20  # the episode made the prompt long
    direct = memory.answer("What is my dog called?", "ana/helper/s2", route="rag")
    assert reply.content == direct.text  # the last human message is the question


def test_chat_model_lets_the_router_choose_and_fills_generation_info(memory):
    seed(memory)
    chat = AgentMemoryChatModel(memory=memory, namespace="ana/helper/s2")
    result = chat.generate([[HumanMessage("What is my dog called?")], [HumanMessage("What's 2+2?")]])
    first, second = (g[0].generation_info for g in result.generations)
    assert first["route"] == "rag" and len(first["evidence"]) >= 1
    assert second["route"] == "none" and second["evidence"] == []
    chunks = list(chat.stream("What is my dog called?"))  # one chunk, carrying the same facts
    assert len(chunks) == 1 and chunks[0].chunk_position == "last"
    assert chunks[0].response_metadata["route"] == "rag" and chunks[0].usage_metadata["input_tokens"] > 20


def test_chat_model_never_uses_another_users_memory(memory):
    ids = seed(memory)
    chat = AgentMemoryChatModel(memory=memory, namespace="ben/helper/s2", route="rag")
    for question in FACTS["ana"]:  # ana's exact words, asked as ben
        meta = chat.invoke(question).response_metadata
        assert meta["evidence"] and set(meta["evidence"]) <= set(ids["ben"])


def test_chat_model_per_call_overrides_and_cuts(memory):
    seed(memory)
    chat = AgentMemoryChatModel(memory=memory, namespace="ana/helper/s2")
    assert chat.invoke("What is my dog called?", route="none").response_metadata["route"] == "none"
    full = chat.invoke("What is my dog called?", route="none").content
    first_word = full.split()[0]
    assert chat.invoke("What is my dog called?", route="none", stop=[first_word]).content == ""
    short = chat.invoke("What is my dog called?", route="none", max_tokens=2).content
    assert memory.backbone.count_tokens(short) == 2 < memory.backbone.count_tokens(full)
    other = chat.invoke("What is my dog called?", route="rag", namespace="ben/helper/s2").response_metadata
    assert other["evidence"] and all(memory.store.find(i).namespace.user_id == "ben" for i in other["evidence"])


def test_chat_model_batch_equals_one_by_one(memory):
    """Parallel calls are serialised on the memory (answers activate modules on a shared backbone)."""
    seed(memory)
    chat = AgentMemoryChatModel(memory=memory, namespace="ana/helper/s2")
    questions = ["What is my dog called?", "Where did I move?", "What is my job?", "hello"]
    assert [m.content for m in chat.batch(questions)] == [chat.invoke(q).content for q in questions]
    assert [m.content for m in asyncio.run(chat.abatch(questions))] == [chat.invoke(q).content for q in questions]


@pytest.mark.parametrize("params, field", [
    ({"namespace": "ana/helper/s2", "temperature": 0.7}, "temperature"),
    ({"namespace": "not a namespace!"}, "namespace"),
    ({"namespace": "ana/helper/s2", "route": "telepathy"}, None),
])
def test_chat_model_rejects_bad_settings(memory, params, field):
    if field is None:  # an unknown route fails at the call, naming the field
        with pytest.raises(ValidationError) as info:
            AgentMemoryChatModel(memory=memory, **params).invoke("hi")
        assert info.value.field == "route"
    else:
        with pytest.raises(PydanticValidationError, match=field):
            AgentMemoryChatModel(memory=memory, **params)


def test_chat_model_needs_a_human_message(memory):
    with pytest.raises(ValidationError) as info:
        AgentMemoryChatModel(memory=memory, namespace="ana").invoke([SystemMessage("only a system prompt")])
    assert info.value.field == "messages"


# -- retriever ------------------------------------------------------------------------------------
def test_retriever_documents_carry_the_episode(memory):
    ids = seed(memory)
    memory.add("My dog Biscuit loves the beach.", "ana/helper/s3", metadata={"topic": "pets"})
    docs = AgentMemoryRetriever(memory=memory, namespace="ana", k=2).invoke("what is my dog called?")
    assert [d.page_content for d in docs][0] == "My dog is called Biscuit."
    top = docs[0]
    assert top.id == top.metadata["id"] == ids["ana"][0]
    assert top.metadata["session_id"] == "s1" and top.metadata["speaker"] == "Ana" and top.metadata["role"] == "user"
    assert top.metadata["timestamp"] == T0.isoformat() and 0 < top.metadata["score"] <= 1
    assert docs[0].metadata["score"] >= docs[1].metadata["score"]
    only_pets = AgentMemoryRetriever(memory=memory, namespace="ana", filters={"topic": "pets"}).invoke("dog")
    assert [d.page_content for d in only_pets] == ["My dog Biscuit loves the beach."]
    assert only_pets[0].metadata["meta_topic"] == "pets"
    in_s3 = AgentMemoryRetriever(memory=memory, namespace="ana/helper/s3", k=10).invoke("dog")
    assert {d.metadata["session_id"] for d in in_s3} == {"s3"}
    strict = AgentMemoryRetriever(memory=memory, namespace="ana", k=10, min_score=0.99).invoke("dog")
    assert strict == []
    assert [d.id for d in asyncio.run(AgentMemoryRetriever(memory=memory, namespace="ana").ainvoke("dog"))] == \
        [d.id for d in AgentMemoryRetriever(memory=memory, namespace="ana").invoke("dog")]


def test_retriever_bound_to_one_user_never_returns_anothers(memory):
    ids = seed(memory)
    retriever = AgentMemoryRetriever(memory=memory, namespace="ben", k=10)
    for text in FACTS["ana"]:
        docs = retriever.invoke(text)
        assert docs and {d.id for d in docs} <= set(ids["ben"])
        assert {d.metadata["user_id"] for d in docs} == {"ben"}


# -- tools ----------------------------------------------------------------------------------------
def test_tools_save_search_forget_round_trip(memory):
    save, search, forget = memory_tools(memory, "ana/helper/s2", speaker="agent")
    assert (save.name, search.name, forget.name) == ("save_memory", "search_memory", "forget_memory")
    assert save.namespace == "ana/helper/s2" and search.namespace == forget.namespace == "ana/helper"
    content = save.invoke({"text": "Ana's sister is called Marta."})
    (episode,) = memory.list("ana")
    assert content == f"saved memory {episode.id}"
    assert (episode.text, episode.role, episode.speaker, str(episode.namespace)) == (
        "Ana's sister is called Marta.", "observation", "agent", "ana/helper/s2")
    call = {"name": "search_memory", "args": {"query": "sister's name", "k": 3}, "id": "c1", "type": "tool_call"}
    found = search.invoke(call)
    assert found.content.startswith(episode.id) and "Marta" in found.content
    assert found.artifact[0]["id"] == episode.id
    gone = forget.invoke({"name": "forget_memory", "args": {"ids": [episode.id]}, "id": "c2", "type": "tool_call"})
    assert gone.status == "success" and gone.content == "forgot 1 memory(ies)"
    assert memory.list("ana") == []
    assert search.invoke({"query": "sister"}) == "no memories found"


def test_tools_bound_to_one_user_cannot_read_or_forget_anothers(memory):
    ids = seed(memory)
    _, search, forget = memory_tools(memory, "ben/helper/s2")
    for text in FACTS["ana"]:
        found = search.invoke({"name": "search_memory", "args": {"query": text, "k": 10}, "id": "c", "type": "tool_call"})
        assert {h["id"] for h in found.artifact} <= set(ids["ben"])
    refused = forget.invoke({"name": "forget_memory", "args": {"ids": [ids["ben"][0], ids["ana"][0]]}, "id": "c",
                             "type": "tool_call"})
    assert refused.status == "error" and "nothing forgotten" in refused.content
    assert len(memory.list("ana")) == 3 and len(memory.list("ben")) == 3  # all or none
    assert memory.get(ids["ana"][0], "ana").text == FACTS["ana"][0]


def test_tool_settings_are_checked_when_built(memory):
    with pytest.raises(PydanticValidationError, match="role"):
        SaveMemoryTool(memory=memory, namespace="ana", role="oracle")
    with pytest.raises(PydanticValidationError, match="namespace"):
        SearchMemoryTool(memory=memory, namespace="ana/../ben")


def test_tool_argument_errors_reach_the_agent_as_messages(memory):
    save = SaveMemoryTool(memory=memory, namespace="ana")
    bad = save.invoke({"name": "save_memory", "args": {"text": "   "}, "id": "c", "type": "tool_call"})
    assert bad.status == "error" and "text" in bad.content
    assert memory.list("ana") == []


# -- recorder -------------------------------------------------------------------------------------
def test_recorder_writes_each_turn_after_the_answer(memory):
    seed(memory)
    recorder = AgentMemoryRecorder(memory, "ana/helper/s2", user_speaker="Ana", raise_error=True)
    chat = AgentMemoryChatModel(memory=memory, namespace="ana/helper/s2", route="rag", callbacks=[recorder])
    reply = chat.invoke("What is my dog called?")
    assert len(recorder.recorded) == 2
    question, answer = (memory.get(i, "ana") for i in recorder.recorded)
    assert (question.text, question.role, question.speaker) == ("What is my dog called?", "user", "Ana")
    assert (answer.text, answer.role, answer.speaker) == (reply.content, "assistant", "assistant")
    assert str(question.namespace) == "ana/helper/s2" and question.timestamp < answer.timestamp
    assert question.id not in reply.response_metadata["evidence"]  # written after it was answered
    again = chat.invoke("What is my dog called?")  # the next turn sees the recorded one in its session
    assert question.id in again.response_metadata["evidence"]
    assert [e.id for e in memory.list("ana/helper/s2")] == recorder.recorded


def test_recorder_skips_tool_calls_and_tool_results():
    class Recorded:  # a stand-in memory that only collects what is written
        def __init__(self):
            self.episodes = []

        def add_many(self, items):
            self.episodes.extend(items)
            return [type("E", (), {"id": f"ep_{len(self.episodes)}{n}"})() for n, _ in enumerate(items)]

    sink = Recorded()
    recorder = AgentMemoryRecorder(sink, "ana/helper/s3", raise_error=True)
    tool_call = AIMessage("", tool_calls=[{"name": "search_memory", "args": {"query": "dog"}, "id": "t1"}])
    fake = FakeMessagesListChatModel(responses=[tool_call, AIMessage("Your dog is Biscuit.")], callbacks=[recorder])
    fake.invoke([HumanMessage("What is my dog called?")])  # the model calls a tool: human recorded, call skipped
    fake.invoke([HumanMessage("What is my dog called?"), tool_call, ToolMessage("Biscuit", tool_call_id="t1")])
    assert [(e.role, e.text) for e in sink.episodes] == [("user", "What is my dog called?")]
    fake.invoke([HumanMessage("Thanks!")])  # responses cycle: a tool call again
    fake.invoke([HumanMessage("And his age?")])
    assert [(e.role, e.text) for e in sink.episodes][-2:] == [("user", "And his age?"), ("assistant", "Your dog is Biscuit.")]


def test_recorder_keeps_the_question_when_the_model_fails(memory):
    recorder = AgentMemoryRecorder(memory, "ana/helper/s4", raise_error=True)
    chat = AgentMemoryChatModel(memory=memory, namespace="ana/helper/s4", route="telepathy")
    with pytest.raises(ValidationError):
        chat.invoke("Remember that I like tea.", config={"callbacks": [recorder]})
    assert [e.text for e in memory.list("ana")] == ["Remember that I like tea."]


def test_recorder_failures_do_not_break_the_conversation_by_default(memory):
    class Broken:
        def add_many(self, items):
            raise NotFoundError("store unreachable")

    chat = AgentMemoryChatModel(memory=memory, namespace="ana/helper/s5")
    reply = chat.invoke("hello", config={"callbacks": [AgentMemoryRecorder(Broken(), "ana/helper/s5")]})
    assert isinstance(reply, AIMessage)
    with pytest.raises(NotFoundError):
        chat.invoke("hello", config={"callbacks": [AgentMemoryRecorder(Broken(), "ana/helper/s5", raise_error=True)]})


async def test_recorder_records_async_calls(memory):
    recorder = AgentMemoryRecorder(memory, "ana/helper/s6")
    chat = AgentMemoryChatModel(memory=memory, namespace="ana/helper/s6")
    reply = await chat.ainvoke("My dog is called Biscuit.", config={"callbacks": [recorder]})
    assert [e.text for e in memory.list("ana/helper/s6")] == ["My dog is called Biscuit.", reply.content]
