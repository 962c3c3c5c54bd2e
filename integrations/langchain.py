"""LangChain integration: a chat model that answers from routed memory, a retriever, tools, a turn recorder.

Each class subclasses exactly one LangChain ABC and holds an :class:`~agent_memory.AgentMemory` plus a
namespace (``user[/agent[/session]]``)::

    memory = AgentMemory.open(home)
    recorder = AgentMemoryRecorder(memory, "sam/assistant/s1", user_speaker="Sam")
    chat = AgentMemoryChatModel(memory=memory, namespace="sam/assistant/s1")
    chat.invoke("My dog is called Biscuit.", config={"callbacks": [recorder]})   # both turns recorded
    AgentMemoryChatModel(memory=memory, namespace="sam/assistant/s2").invoke("What is my dog called?")

* :class:`AgentMemoryChatModel` (``BaseChatModel``) answers the last human message with
  :meth:`AgentMemory.answer`: the router picks none / icl / rag / adapter / a hybrid, activates the
  modules and puts the context in the prompt. Earlier messages are not re-sent: the memory is the
  context (record turns with :class:`AgentMemoryRecorder`). Route, modules, reason and evidence ids are
  in ``response_metadata`` and ``generation_info``; prompt and answer tokens in ``usage_metadata``.
* :class:`AgentMemoryRetriever` (``BaseRetriever``): episodes as Documents (id, score, timestamp, ...).
* :class:`SaveMemoryTool`, :class:`SearchMemoryTool`, :class:`ForgetMemoryTool` (``BaseTool``), built
  together by :func:`memory_tools`.
* :class:`AgentMemoryRecorder` (``BaseCallbackHandler``) writes every chat-model turn (the human message
  and the reply) into episodic memory when the call ends.

Async calls run the sync code in a worker thread (LangChain's default executors): one copy of the logic.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Annotated, Any, Iterator, Literal, Sequence
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler, CallbackManagerForLLMRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, LLMResult
from langchain_core.retrievers import BaseRetriever
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from agent_memory.errors import AgentMemoryError, ValidationError
from agent_memory.memory import AgentMemory
from agent_memory.prompting import format_episode
from agent_memory.types import Namespace
from agent_memory.validation import check_role
from agent_memory.integrations.shared import clip, hit_metadata, namespace_of, read_scope, route_info, turn_episodes

__all__ = [
    "AgentMemoryChatModel",
    "AgentMemoryRecorder",
    "AgentMemoryRetriever",
    "ForgetMemoryTool",
    "SaveMemoryTool",
    "SearchMemoryTool",
    "memory_tools",
]


NamespaceStr = Annotated[str, BeforeValidator(lambda value: str(namespace_of(value)))]
"""``user[/agent[/session]]``, validated (a :class:`Namespace` is accepted too)."""


# -- chat model -----------------------------------------------------------------------------------
class AgentMemoryChatModel(BaseChatModel):
    """A chat model that answers the last human message from routed memory (adapters, RAG, ICL).

    ``namespace`` is ``user/agent/session``: retrieval and modules cover the user/agent, the session is
    the current one (its last turns are the ICL window). Decoding is greedy; ``max_tokens`` bounds the generation
    (default ``MemoryConfig.backbone.max_new_tokens``) and ``stop`` cuts the answer.
    Per call, ``invoke(..., route="rag", k=3, namespace="...")`` overrides the fields of the same name.
    """

    memory: AgentMemory = Field(exclude=True)
    """The memory that answers (its backbone is loaded on first use)."""
    namespace: NamespaceStr
    """``user[/agent[/session]]`` the answers come from; the session is the conversation's current one."""
    k: int | None = None
    """Episodes to retrieve (``None``: ``MemoryConfig.retrieval_k``)."""
    route: str | None = None
    """Force a route (``none icl rag adapter adapter+rag adapter+icl``); ``None`` lets the router choose."""
    budget_tokens: int = Field(default=1024, gt=0)
    """Token budget for remembered text in the prompt."""
    max_tokens: int | None = Field(default=None, gt=0)
    """Cut answers to this many tokens."""
    stop: list[str] | None = None
    """Cut answers at the first of these strings."""
    temperature: float | None = None
    """Only greedy decoding exists: ``None`` or ``0``."""

    @field_validator("temperature")
    @classmethod
    def _greedy_only(cls, value: float | None) -> float | None:
        if value not in (None, 0):
            raise ValueError(f"temperature={value!r}: decoding is greedy; pass 0 or leave it out")
        return value

    @property
    def _llm_type(self) -> str:
        return "agent-memory"

    @property
    def model_name(self) -> str:
        """The backbone's name (loads it)."""
        return self.memory.backbone.name

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "route": self.route, "k": self.k, "home": self.memory.config.home}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "agent_memory"
        params["ls_model_name"] = kwargs["model"] if isinstance(kwargs.get("model"), str) else self.model_name
        return params

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message, info = self._respond(messages, stop, kwargs)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(**message), generation_info=info)],
                          llm_output={"model_name": message["response_metadata"]["model_name"]})

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """The whole answer as one chunk (the backbone does not stream tokens)."""
        message, info = self._respond(messages, stop, kwargs)
        chunk = AIMessageChunk(**message, chunk_position="last")
        if run_manager is not None:
            run_manager.on_llm_new_token(chunk.text, chunk=ChatGenerationChunk(message=chunk))
        yield ChatGenerationChunk(message=chunk, generation_info=info)

    def _respond(self, messages: list[BaseMessage], stop: list[str] | None,
                 kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The answer message's fields and the route info, for the last human message."""
        question = _last_human_text(messages)
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        result = self.memory.answer(
            question, namespace_of(kwargs.get("namespace", self.namespace)),
            k=kwargs.get("k", self.k), route=kwargs.get("route", self.route), budget_tokens=self.budget_tokens,
            max_new_tokens=max_tokens,
        )
        backbone = self.memory.backbone
        text = clip(result.text, stop=stop or self.stop, max_tokens=max_tokens, tokenizer=backbone.tokenizer)
        output_tokens = backbone.count_tokens(text) if text else 0
        usage = UsageMetadata(input_tokens=result.prompt_tokens, output_tokens=output_tokens,
                              total_tokens=result.prompt_tokens + output_tokens)
        message = {"content": text, "usage_metadata": usage, "response_metadata": {"model_name": backbone.name}}
        return message, route_info(result)


def _last_human_text(messages: Sequence[BaseMessage]) -> str:
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            return message.text
    raise ValidationError("messages", "there is no human message to answer", "end the messages with a HumanMessage")


# -- retriever ------------------------------------------------------------------------------------
class AgentMemoryRetriever(BaseRetriever):
    """Episodes most similar to the query, within ``namespace`` (a scope: ``user`` covers all of it).

    Each Document has the episode text as ``page_content``, the episode id as ``id`` and metadata
    ``id score timestamp user_id agent_id session_id speaker role absorbed_by version`` plus the
    episode's own metadata as ``meta_<key>``. ``invoke(query, k=..., filters=...)`` overrides per call.
    """

    memory: AgentMemory = Field(exclude=True)
    """The memory searched."""
    namespace: NamespaceStr
    """The scope searched: ``user``, ``user/agent`` or ``user/agent/session``; never beyond the user."""
    k: int = Field(default=4, gt=0)
    """Documents to return (at most)."""
    filters: dict[str, Any] | None = None
    """Metadata filter (``$eq $ne $gt $gte $lt $lte $in $nin``), as in ``EpisodicStore.search``."""
    min_score: float | None = None
    """Drop hits whose cosine similarity is below this."""

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        filters: dict[str, Any] | None = None,
    ) -> list[Document]:
        hits = self.memory.search(query, self.namespace, k or self.k,
                                  filters=self.filters if filters is None else filters)
        return [
            Document(id=h.episode.id, page_content=h.episode.text, metadata=hit_metadata(h))
            for h in hits
            if self.min_score is None or h.score >= self.min_score
        ]


# -- tools ----------------------------------------------------------------------------------------
class SaveMemoryInput(BaseModel):
    text: str = Field(description="The fact or event to remember, as one self-contained sentence.")


class SearchMemoryInput(BaseModel):
    query: str = Field(description="What to look for in memory, in natural language.")
    k: int = Field(default=5, ge=1, le=50, description="How many memories to return at most.")


class ForgetMemoryInput(BaseModel):
    ids: list[str] = Field(min_length=1, description="Ids of the memories to forget, as returned by search_memory.")


class _MemoryTool(BaseTool):
    """Shared fields: the memory, the namespace, errors reported to the agent as tool messages."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    memory: AgentMemory = Field(exclude=True)
    namespace: NamespaceStr
    handle_tool_error: bool = True
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"


class SaveMemoryTool(_MemoryTool):
    """Write one episode into ``namespace`` (missing agent/session parts become ``default``)."""

    name: str = "save_memory"
    description: str = "Save a fact or event to long-term memory so it can be recalled in later conversations."
    args_schema: type[BaseModel] = SaveMemoryInput
    role: Annotated[str, BeforeValidator(check_role)] = "observation"
    """Role the saved episodes get (``user assistant system tool observation``)."""
    speaker: str = ""
    """Speaker the saved episodes get."""

    def _run(self, text: str) -> tuple[str, dict[str, Any]]:
        try:
            episode = self.memory.add(text, self.namespace, speaker=self.speaker, role=self.role)
        except AgentMemoryError as exc:
            raise ToolException(f"not saved: {exc}") from exc
        return f"saved memory {episode.id}", episode.to_dict()


class SearchMemoryTool(_MemoryTool):
    """Search episodes within ``namespace`` (a scope); content lists ``id | date | text | score``."""

    name: str = "search_memory"
    description: str = "Search long-term memory for facts and past conversations relevant to a query."
    args_schema: type[BaseModel] = SearchMemoryInput

    def _run(self, query: str, k: int = 5) -> tuple[str, list[dict[str, Any]]]:
        try:
            hits = self.memory.search(query, self.namespace, k)
        except AgentMemoryError as exc:
            raise ToolException(f"search failed: {exc}") from exc
        if not hits:
            return "no memories found", []
        lines = [f"{h.episode.id} | {format_episode(h.episode)} | score {h.score:.2f}" for h in hits]
        return "\n".join(lines), [h.to_dict() for h in hits]


class ForgetMemoryTool(_MemoryTool):
    """Forget episodes by id within ``namespace``: all or none; ids outside it are refused.

    Uses :meth:`AgentMemory.forget`, which also drops any module that absorbed them (their other
    episodes become pending and are consolidated again by the next run).
    """

    name: str = "forget_memory"
    description: str = "Forget memories by id (ids come from search_memory). Use when the user asks to forget something."
    args_schema: type[BaseModel] = ForgetMemoryInput

    def _run(self, ids: list[str]) -> tuple[str, dict[str, Any]]:
        try:
            report = self.memory.forget(self.namespace, episode_ids=list(ids), retrain=False)
        except AgentMemoryError as exc:
            raise ToolException(f"nothing forgotten: {exc}") from exc
        return f"forgot {report.episodes} memory(ies)", report.to_dict()


def memory_tools(memory: AgentMemory, namespace: str | Namespace, **save_fields: Any) -> list[BaseTool]:
    """Save into ``namespace``; search and forget within its user/agent (as answers read)."""
    ns = namespace_of(namespace)
    scope = str(read_scope(ns))
    return [
        SaveMemoryTool(memory=memory, namespace=str(ns), **save_fields),
        SearchMemoryTool(memory=memory, namespace=scope),
        ForgetMemoryTool(memory=memory, namespace=scope),
    ]


# -- recorder -------------------------------------------------------------------------------------
class AgentMemoryRecorder(BaseCallbackHandler):
    """Records each chat-model turn into episodic memory: the human message and the reply to it.

    A call whose last message is human starts a turn; when the call ends, the human message (timestamped
    when it started) and the reply's text are added together, all or none. Written only then, so a
    model answering from this memory never retrieves the question it is answering. Replies that only call
    tools are not conversation turns and are skipped (so are tool results: their call's last message is
    not human); a failed call records the human message alone. Attach it per call
    (``config={"callbacks": [recorder]}``) or to the model (``callbacks=[recorder]``).
    """

    def __init__(self, memory: AgentMemory, namespace: str | Namespace, *, user_speaker: str = "",
                 agent_speaker: str = "assistant", raise_error: bool = False) -> None:
        self.raise_error = raise_error
        """Re-raise a failed write (default: LangChain logs it and the conversation goes on)."""
        self.memory = memory
        self.namespace = namespace_of(namespace).for_write()
        self.user_speaker = user_speaker
        self.agent_speaker = agent_speaker
        self.recorded: list[str] = []
        """Ids of the episodes written, in order."""
        self._pending: dict[UUID, tuple[HumanMessage, datetime]] = {}
        self._lock = threading.Lock()

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID,
                            **kwargs: Any) -> None:
        last = messages[0][-1] if messages and messages[0] else None
        if isinstance(last, HumanMessage) and last.text.strip():
            with self._lock:
                self._pending[run_id] = (last, datetime.now(timezone.utc))

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            pending = self._pending.pop(run_id, None)
        if pending is None:
            return
        reply = None
        generation = response.generations[0][0] if response.generations and response.generations[0] else None
        if isinstance(generation, ChatGeneration) and not getattr(generation.message, "tool_calls", None):
            reply = generation.message.text
        self._write(pending, reply)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            pending = self._pending.pop(run_id, None)
        if pending is not None:
            self._write(pending, None)

    def _write(self, pending: tuple[HumanMessage, datetime], reply: str | None) -> None:
        human, asked_at = pending
        episodes = turn_episodes(self.namespace, human.text, reply, asked_at=asked_at,
                                 user_speaker=human.name or self.user_speaker, agent_speaker=self.agent_speaker)
        added = self.memory.add_many(episodes)
        with self._lock:
            self.recorded.extend(e.id for e in added)
