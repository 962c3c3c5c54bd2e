"""LlamaIndex integration: AgentMemoryBlock in LlamaIndex's Memory, AgentMemoryBuffer, AgentMemoryLLM.

LlamaIndex ships no standard conformance suite, so these tests drive each class through the real
installed framework (``Memory``, ``SimpleChatEngine``, LLM callbacks) on the tiny backbone.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.memory import Memory

from agent_memory import AgentMemory, EpisodicStore, MemoryConfig, ValidationError
from agent_memory.backbone import Backbone
from agent_memory.config import BackboneConfig
from agent_memory.integrations.llama_index import AgentMemoryBlock, AgentMemoryBuffer, AgentMemoryLLM

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)
FACTS = {
    "ana": ["My dog is called Biscuit.", "I moved to Lisbon last spring.", "I work as a nurse at night."],
    "ben": ["My cat is called Pepper.", "I live in Toronto.", "I am allergic to peanuts."],
}


def user(text: str) -> ChatMessage:
    return ChatMessage(role=MessageRole.USER, content=text)


@pytest.fixture
def memory(tiny_model_dir, embedder, tmp_path) -> AgentMemory:
    config = MemoryConfig(home=str(tmp_path / "home"), backbone=BackboneConfig(model=str(tiny_model_dir),
                                                                               dtype="float32", max_new_tokens=8))
    return AgentMemory(EpisodicStore.in_memory(embedder), Backbone.load(config.backbone), config)


@pytest.fixture
def ids(memory) -> dict[str, list[str]]:
    """Each user's facts in session s1 (a day apart)."""
    return {u: [memory.add(t, f"{u}/helper/s1", speaker=u.title(), timestamp=T0 + timedelta(days=n)).id
                for n, t in enumerate(texts)] for u, texts in FACTS.items()}


# -- LLM ------------------------------------------------------------------------------------------
def test_llm_complete_is_the_routed_answer(memory, ids):
    llm = AgentMemoryLLM(memory=memory, namespace="ana/helper/s2")
    response = llm.complete("What is my dog called?")
    direct = memory.answer("What is my dog called?", "ana/helper/s2")
    assert response.text == direct.text
    info = response.additional_kwargs
    assert info["route"] == direct.route == "rag" and ids["ana"][0] in info["evidence"]
    assert info["reason"] == direct.reason and response.raw["route"] == "rag"
    forced = llm.complete("What is my dog called?", route="none")
    assert forced.additional_kwargs["route"] == "none" and forced.additional_kwargs["evidence"] == []
    meta = llm.metadata
    assert meta.is_chat_model and meta.model_name == memory.backbone.name and meta.num_output == 8
    assert meta.context_window == memory.backbone.model.config.max_position_embeddings


def test_llm_chat_answers_the_last_user_message(memory, ids):
    llm = AgentMemoryLLM(memory=memory, namespace="ana/helper/s2", route="rag")
    messages = [ChatMessage(role=MessageRole.SYSTEM, content="be brief"), user("hello"),
                ChatMessage(role=MessageRole.ASSISTANT, content="hi"), user("What is my dog called?")]
    reply = llm.chat(messages)
    assert reply.message.role == MessageRole.ASSISTANT
    assert reply.message.content == llm.complete("What is my dog called?").text
    assert ids["ana"][0] in reply.message.additional_kwargs["evidence"]
    chunks = list(llm.stream_chat(messages))
    assert len(chunks) == 1 and chunks[0].delta == chunks[0].message.content == reply.message.content
    streamed = list(llm.stream_complete("What is my dog called?"))
    assert [c.delta for c in streamed] == [reply.message.content]
    with pytest.raises(ValidationError) as info:
        llm.chat([ChatMessage(role=MessageRole.SYSTEM, content="only a system prompt")])
    assert info.value.field == "messages"


def test_llm_async_methods_match_sync(memory, ids):
    llm = AgentMemoryLLM(memory=memory, namespace="ana/helper/s2")

    async def scenario():
        chunks = [c async for c in await llm.astream_chat([user("Where did I move?")])]
        return ((await llm.acomplete("Where did I move?")).text, (await llm.achat([user("Where did I move?")])).message.content,
                [c.delta async for c in await llm.astream_complete("Where did I move?")], chunks[-1].message.content)

    expected = llm.complete("Where did I move?").text
    complete, chat, deltas, streamed = asyncio.run(scenario())
    assert complete == chat == streamed == expected and deltas == [expected]


def test_llm_for_one_user_never_uses_anothers_memory(memory, ids):
    llm = AgentMemoryLLM(memory=memory, namespace="ben/helper/s2", route="rag")
    for question in FACTS["ana"]:
        evidence = llm.complete(question).additional_kwargs["evidence"]
        assert evidence and set(evidence) <= set(ids["ben"])


# -- chat memory ----------------------------------------------------------------------------------
def test_buffer_writes_a_turn_when_the_reply_arrives(memory):
    buffer = AgentMemoryBuffer(memory=memory, namespace="ana/helper/s2", user_speaker="Ana")
    buffer.put(user("My dog is called Biscuit."))
    assert memory.list("ana") == []  # the question waits for its answer
    tool_call = ChatMessage(role=MessageRole.ASSISTANT, content="checking",
                            additional_kwargs={"tool_calls": [{"id": "t1", "function": {"name": "x"}}]})
    buffer.put(tool_call)
    buffer.put(ChatMessage(role=MessageRole.TOOL, content="ok", additional_kwargs={"tool_call_id": "t1"}))
    assert memory.list("ana") == []
    buffer.put(ChatMessage(role=MessageRole.ASSISTANT, content="What a lovely name!"))
    asked, replied = memory.list("ana/helper/s2")
    assert (asked.text, asked.role, asked.speaker) == ("My dog is called Biscuit.", "user", "Ana")
    assert (replied.text, replied.role, replied.speaker) == ("What a lovely name!", "assistant", "assistant")
    assert asked.timestamp < replied.timestamp
    assert [m.content for m in buffer.get_all()] == ["My dog is called Biscuit.", "checking", "ok", "What a lovely name!"]
    buffer.put(user("Bye."))
    buffer.flush()
    assert [e.text for e in memory.list("ana")][-1] == "Bye."
    buffer.reset()
    assert buffer.get_all() == [] and len(memory.list("ana")) == 3  # the conversation only


def test_buffer_get_recalls_older_sessions_not_the_current_one(memory, ids):
    buffer = AgentMemoryBuffer.from_defaults(memory, "ana/helper/s2", chat_history=[user("hello")], max_messages=3)
    assert buffer.get() == [user("hello")]  # nothing relevant to a greeting: no memory note
    buffer.put(user("What is my dog called?"))
    messages = buffer.get()
    assert messages[0].role == MessageRole.SYSTEM and "My dog is called Biscuit." in messages[0].content
    assert messages[0].content.startswith("What you remember")
    assert [m.content for m in messages[1:]] == ["hello", "What is my dog called?"]
    buffer.put(ChatMessage(role=MessageRole.ASSISTANT, content="My dog is called Biscuit."))
    again = buffer.get(input="What is my dog called?")
    assert all(m.role != MessageRole.SYSTEM for m in again)  # already in the conversation: not repeated
    assert [m.content for m in again] == ["hello", "What is my dog called?", "My dog is called Biscuit."]
    buffer.put(user("Thanks!"))
    assert [m.content for m in buffer.get() if m.role != MessageRole.SYSTEM] == [
        "What is my dog called?", "My dog is called Biscuit.", "Thanks!"]  # the last max_messages
    assert asyncio.run(buffer.aget(input="Where did I move?"))[0].content.endswith("I moved to Lisbon last spring.")


def test_buffer_for_one_user_never_recalls_anothers(memory, ids):
    buffer = AgentMemoryBuffer(memory=memory, namespace="ben/helper/s2")
    for text in FACTS["ana"]:
        note = buffer.get(input=text)
        assert note and all(fact not in note[0].content for fact in FACTS["ana"])


def test_chat_engine_remembers_across_sessions_and_never_retrieves_the_question(memory):
    llm = AgentMemoryLLM(memory=memory, namespace="ana/helper/s1")
    SimpleChatEngine.from_defaults(llm=llm, memory=AgentMemoryBuffer(memory=memory, namespace="ana/helper/s1")) \
        .chat("My dog is called Biscuit.")
    asked = memory.list("ana")[0]
    assert asked.text == "My dog is called Biscuit." and str(asked.namespace) == "ana/helper/s1"
    later = AgentMemoryLLM(memory=memory, namespace="ana/helper/s2", route="rag")
    buffer = AgentMemoryBuffer(memory=memory, namespace="ana/helper/s2")
    SimpleChatEngine.from_defaults(llm=later, memory=buffer).chat("What is my dog called?")
    reply = buffer.get_all()[-1]
    assert asked.id in reply.additional_kwargs["evidence"]
    question = next(e for e in memory.list("ana/helper/s2") if e.role == "user")
    assert question.id not in reply.additional_kwargs["evidence"]  # written after it was answered


# -- memory block ---------------------------------------------------------------------------------
def test_block_in_llama_index_memory_stores_flushed_messages_and_recalls_them(memory, ids):
    block = AgentMemoryBlock(memory=memory, namespace="ana/helper")
    chat = Memory.from_defaults(session_id="llama-s9", memory_blocks=[block], token_limit=60, token_flush_size=20,
                                chat_history_token_ratio=0.5, tokenizer_fn=lambda text: text.split())
    for n in range(6):
        chat.put(user(f"My favourite fruit number {n} is the mango from the market."))
    flushed = memory.list("ana/helper/llama-s9")
    assert flushed and all(e.role == "user" and "mango" in e.text for e in flushed)
    messages = chat.get(input="What is my dog called?")
    assert messages[0].role == MessageRole.SYSTEM
    assert "<agent_memory>" in messages[0].content and "My dog is called Biscuit." in messages[0].content
    assert flushed[0].text not in [m.content for m in messages[1:]]


def test_block_session_and_scope(memory, ids):
    pinned = AgentMemoryBlock(memory=memory, namespace="ana/helper/s7")
    asyncio.run(pinned.aput([user("I drink green tea.")], session_id="ignored"))
    asyncio.run(AgentMemoryBlock(memory=memory, namespace="ana").aput([user("I bike to work.")], session_id="bad id!"))
    assert [str(e.namespace) for e in memory.list("ana/helper/s7")] == ["ana/helper/s7"]
    assert [str(e.namespace) for e in memory.list("ana/default")] == ["ana/default/default"]
    assert asyncio.run(pinned.aget([])) == ""
    recalled = asyncio.run(pinned.aget([user("what do I drink?")]))
    assert "I drink green tea." in recalled and recalled.startswith("[")
    ben = AgentMemoryBlock(memory=memory, namespace="ben/helper")
    for text in FACTS["ana"]:
        assert all(fact not in asyncio.run(ben.aget([user(text)])) for fact in FACTS["ana"])
