"""LlamaIndex integration: a memory block, a chat memory and an LLM over routed memory.

* :class:`AgentMemoryBlock` (``BaseMemoryBlock[str]``) for LlamaIndex's ``Memory``: messages flushed out
  of its short-term queue are written into episodic memory (``_aput``); on every ``get`` it returns the
  episodes relevant to the latest user message as dated lines, which ``Memory`` puts in the prompt.
* :class:`AgentMemoryBuffer` (``BaseMemory``): a chat memory for agents and chat engines. The
  conversation is kept in process (``get_all``); each completed turn (a user message and the reply
  to it) is written into the session's episodes; ``get`` returns the recent conversation, preceded by
  a system message with the older episodes relevant to the question, from any session of the user.
* :class:`AgentMemoryLLM` (``CustomLLM``): ``complete(question)`` and ``chat(messages)`` answer with
  :meth:`AgentMemory.answer` (the router picks none / icl / rag / adapter / a hybrid, activates the
  modules, injects the context); route, modules, reason and evidence ids are in ``additional_kwargs``.

Turns are written once the reply exists, never before: a question already in memory would be the
first thing retrieval finds for itself. Async methods run the sync code in a worker thread.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any, Annotated, Sequence

from llama_index.core.base.llms.generic_utils import (
    completion_response_to_chat_response,
    stream_completion_response_to_chat_response,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import BeforeValidator, ConfigDict, Field, PrivateAttr
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.memory import BaseMemory
from llama_index.core.memory.memory import BaseMemoryBlock

from agent_memory.errors import ValidationError
from agent_memory.memory import AgentMemory
from agent_memory.store import NewEpisode
from agent_memory.types import Namespace, check_id
from agent_memory.integrations.shared import (
    memory_lines,
    namespace_of,
    read_scope,
    recall,
    route_info,
    turn_episodes,
)

__all__ = ["AgentMemoryBlock", "AgentMemoryBuffer", "AgentMemoryLLM"]

NamespaceStr = Annotated[str, BeforeValidator(lambda value: str(namespace_of(value)))]
"""``user[/agent[/session]]``, validated (a :class:`Namespace` is accepted too)."""
MEMORY_PROMPT = "What you remember about the user from earlier conversations (dated):\n{memories}"
_ROLES = {
    MessageRole.USER: "user", MessageRole.ASSISTANT: "assistant", MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant", MessageRole.SYSTEM: "system", MessageRole.DEVELOPER: "system",
    MessageRole.TOOL: "tool", MessageRole.FUNCTION: "tool",
}


def _text(message: ChatMessage) -> str:
    return (message.content or "").strip()


def _last_user_text(messages: Sequence[ChatMessage] | None) -> str:
    for message in reversed(messages or ()):
        if message.role == MessageRole.USER and _text(message):
            return _text(message)
    return ""


def _calls_tools(message: ChatMessage) -> bool:
    return bool(message.additional_kwargs.get("tool_calls")) or any(
        getattr(b, "block_type", None) == "tool_call" for b in message.blocks)


# -- memory block ---------------------------------------------------------------------------------
class AgentMemoryBlock(BaseMemoryBlock[str]):
    """Long-term memory for LlamaIndex's ``Memory``: flushed messages in, relevant episodes out.

    Flushed messages go to ``namespace``'s session if it names one, else to the ``Memory``'s
    ``session_id`` (when it is a valid id), else ``default``. Reads cover the user/agent.
    """

    name: str = "agent_memory"
    memory: AgentMemory = Field(exclude=True)
    """The episodic memory written and searched."""
    namespace: NamespaceStr
    """``user[/agent[/session]]``; the agent defaults to ``default``."""
    k: int = Field(default=5, gt=0)
    """Episodes searched per get (the relevant ones are returned)."""

    def _scope(self, session_id: str | None = None) -> Namespace:
        ns = namespace_of(self.namespace)
        session = ns.session_id or _valid_session(session_id)
        return Namespace(ns.user_id, ns.agent_id or "default", session)

    async def _aget(self, messages: list[ChatMessage] | None = None, session_id: str | None = None,
                    **block_kwargs: Any) -> str:
        question = _last_user_text(messages)
        if not question:
            return ""
        scope = read_scope(self._scope())
        hits = await asyncio.to_thread(recall, self.memory, question, scope, self.k,
                                       exclude=[_text(m) for m in messages or ()])
        return memory_lines(hits)

    async def _aput(self, messages: list[ChatMessage]) -> None:
        now = datetime.now(timezone.utc)
        episodes = [
            NewEpisode(_text(m), self._scope(m.additional_kwargs.get("session_id")), timestamp=now,
                       role=_ROLES.get(m.role, "observation"))
            for m in messages if _text(m)
        ]
        if episodes:
            await asyncio.to_thread(self.memory.add_many, episodes)


def _valid_session(session_id: Any) -> str:
    try:
        return check_id("session_id", session_id)
    except ValidationError:
        return "default"


# -- chat memory ----------------------------------------------------------------------------------
class AgentMemoryBuffer(BaseMemory):
    """A chat memory whose completed turns become episodes and whose ``get`` recalls older ones.

    ``put`` keeps every message in the conversation; a user message is written together with the
    assistant reply that follows it (replies that only call tools do not count), or alone by
    :meth:`flush`. ``get`` returns the last ``max_messages`` messages, preceded by a system message
    listing the relevant episodes of the user/agent not already among them. ``set`` and ``reset`` change
    the conversation only: episodes are forgotten with ``AgentMemory.forget``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    memory: AgentMemory = Field(exclude=True)
    """The episodic memory written and searched."""
    namespace: NamespaceStr
    """``user/agent/session`` of this conversation (missing parts: ``default``)."""
    k: int = Field(default=5, gt=0)
    """Episodes searched per get."""
    max_messages: int = Field(default=20, gt=0)
    """Recent messages ``get`` returns."""
    memory_prompt: str = MEMORY_PROMPT
    """System message template; ``{memories}`` becomes the dated lines."""
    user_speaker: str = ""
    agent_speaker: str = "assistant"
    _history: list[ChatMessage] = PrivateAttr(default_factory=list)
    _pending: tuple[ChatMessage, datetime] | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "AgentMemoryBuffer"

    @classmethod
    def from_defaults(cls, memory: AgentMemory, namespace: str | Namespace,
                      chat_history: list[ChatMessage] | None = None, **kwargs: Any) -> "AgentMemoryBuffer":
        buffer = cls(memory=memory, namespace=namespace, **kwargs)
        buffer.set(chat_history or [])
        return buffer

    def get(self, input: str | None = None, **kwargs: Any) -> list[ChatMessage]:
        recent = self._history[-self.max_messages:]
        question = input or _last_user_text(recent)
        scope = read_scope(namespace_of(self.namespace))
        seen = [question, *(_text(m) for m in recent)]
        hits = recall(self.memory, question, scope, self.k, exclude=seen) if question else []
        if not hits:
            return list(recent)
        note = ChatMessage(role=MessageRole.SYSTEM, content=self.memory_prompt.format(memories=memory_lines(hits)))
        return [note, *recent]

    def get_all(self) -> list[ChatMessage]:
        return list(self._history)

    def put(self, message: ChatMessage) -> None:
        self._history.append(message)
        if message.role == MessageRole.USER and _text(message):
            self.flush()
            self._pending = (message, datetime.now(timezone.utc))
        elif message.role == MessageRole.ASSISTANT and _text(message) and not _calls_tools(message):
            pending, self._pending = self._pending, None
            asked, asked_at = pending if pending else (None, None)
            self._write(asked, asked_at, _text(message))

    def flush(self) -> None:
        """Write a user message still waiting for its reply."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._write(pending[0], pending[1], None)

    def set(self, messages: list[ChatMessage]) -> None:
        self._history, self._pending = list(messages), None

    def reset(self) -> None:
        self.set([])

    def _write(self, asked: ChatMessage | None, asked_at: datetime | None, reply: str | None) -> None:
        episodes = turn_episodes(namespace_of(self.namespace).for_write(), _text(asked) if asked else None, reply,
                                 asked_at=asked_at, user_speaker=self.user_speaker, agent_speaker=self.agent_speaker)
        self.memory.add_many(episodes)


# -- LLM ------------------------------------------------------------------------------------------
class AgentMemoryLLM(CustomLLM):
    """A LlamaIndex LLM that answers from routed memory on the memory's backbone.

    ``complete(prompt)`` takes the prompt as the question; ``chat(messages)`` answers the last user
    message (the memory, not the message list, is the context). Decoding is greedy; one chunk streams.
    """

    memory: AgentMemory = Field(exclude=True)
    """The memory that answers (its backbone loads on first use)."""
    namespace: NamespaceStr
    """``user/agent/session``: answers come from the user/agent; the session is the current one."""
    k: int | None = None
    """Episodes to retrieve (``None``: ``MemoryConfig.retrieval_k``)."""
    route: str | None = None
    """Force a route; ``None`` lets the router choose."""
    budget_tokens: int = Field(default=1024, gt=0)
    """Token budget for remembered text in the prompt."""

    @classmethod
    def class_name(cls) -> str:
        return "AgentMemoryLLM"

    @property
    def metadata(self) -> LLMMetadata:
        backbone = self.memory.backbone
        return LLMMetadata(
            context_window=getattr(backbone.model.config, "max_position_embeddings", 2048),
            num_output=self.memory.config.backbone.max_new_tokens,
            is_chat_model=True,
            model_name=backbone.name,
        )

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        result = self.memory.answer(prompt, namespace_of(kwargs.get("namespace", self.namespace)),
                                    k=kwargs.get("k", self.k), route=kwargs.get("route", self.route),
                                    budget_tokens=self.budget_tokens)
        return CompletionResponse(text=result.text, additional_kwargs=route_info(result), raw=result.to_dict())

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        response = self.complete(prompt, formatted=formatted, **kwargs)

        def chunks() -> CompletionResponseGen:
            yield response.model_copy(update={"delta": response.text})

        return chunks()

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return completion_response_to_chat_response(self.complete(_question(messages), formatted=True, **kwargs))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return stream_completion_response_to_chat_response(
            self.stream_complete(_question(messages), formatted=True, **kwargs))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await asyncio.to_thread(self.complete, prompt, formatted, **kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await asyncio.to_thread(self.chat, messages, **kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        responses = await asyncio.to_thread(lambda: list(self.stream_complete(prompt, formatted, **kwargs)))
        return _agen(responses)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        responses = await asyncio.to_thread(lambda: list(self.stream_chat(messages, **kwargs)))
        return _agen(responses)


def _question(messages: Sequence[ChatMessage]) -> str:
    question = _last_user_text(messages)
    if not question:
        raise ValidationError("messages", "there is no user message to answer", "end the messages with a user message")
    return question


async def _agen(items: list[Any]):
    for item in items:
        yield item
