"""QA written by a chat model: natural questions for users who have a stronger LLM than the backbone.

Template questions ("What did Maria say about Biscuit?") teach a module its facts under one
wording; people ask in others ("What is the name of Maria's dog?"). ``ChatModelSynthesizer``
asks any LangChain ``BaseChatModel`` to write natural question/answer pairs for each episode
and adds them to a base synthesizer's examples (templates by default, which keep the
written-out dates, who-said-it and never-discussed negatives).

Generated pairs are checked before they are trained on: each must name a turn of the
batch, have a question and a short answer, and the answer must be grounded in that turn
(most of its content words appear in the turn or its date). Rejected pairs are counted,
never trained on. A chat model that fails raises ``SynthesisError``: consolidation then
commits nothing and marks nothing, and the next run retries.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from agent_memory.errors import AgentMemoryError, ConfigError
from agent_memory.types import Episode

from agent_memory.consolidation.synthesis import STOP_WORDS, Synthesizer, TemplateSynthesizer, spoken_date
from agent_memory.consolidation.trainer import QAExample

INSTRUCTIONS = """You write study questions that test memory of a conversation.
For each numbered turn below, write up to {n} different questions a person might later ask about the facts in it, \
in natural everyday wording (who, what, where, when, why, how many), each with a short answer that uses only that \
turn. Write dates as in the turn's header, like "9 May 2023".
Reply with one JSON object per line and nothing else:
{{"turn": 1, "question": "...", "answer": "..."}}"""

_OBJECT = re.compile(r"\{[^{}]*\}")
_WORD = re.compile(r"[a-z0-9]+")


class SynthesisError(AgentMemoryError):
    """The chat model that writes training QA failed; nothing was trained or marked."""


@dataclass
class GenerationStats:
    """What the chat model produced over this synthesizer's life."""

    calls: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


@dataclass
class ChatModelSynthesizer:
    """Base synthesizer's QA plus natural QA from a LangChain chat model, checked for grounding."""

    chat_model: Any
    """A LangChain ``BaseChatModel`` (anything with ``invoke(messages)`` returning a message with ``content``)."""
    questions_per_episode: int = 4
    """How many natural questions to ask for per episode."""
    episodes_per_call: int = 8
    """Episodes shown to the chat model in one request."""
    max_answer_words: int = 30
    """Longer generated answers are rejected (modules learn short answers best)."""
    min_grounding: float = 0.6
    """Share of an answer's content words that must appear in its turn or the turn's date."""
    base: Synthesizer = field(default_factory=TemplateSynthesizer)
    """Synthesizer whose examples are kept (templates: dates, speakers, negatives)."""
    cache_size: int = 10_000
    """Episodes whose generated pairs are kept, so planning and training one module ask the chat model once."""
    stats: GenerationStats = field(default_factory=GenerationStats)
    _cache: dict[tuple[str, int], list[QAExample]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not callable(getattr(self.chat_model, "invoke", None)):
            raise ConfigError("chat_model", f"{type(self.chat_model).__name__} has no invoke()",
                              "pass a LangChain BaseChatModel")
        for name in ("questions_per_episode", "episodes_per_call", "max_answer_words", "cache_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"{value!r} is invalid", "use an integer >= 1")
        if not 0 <= self.min_grounding <= 1:
            raise ConfigError("min_grounding", f"{self.min_grounding!r} is out of range", "use a value in [0, 1]")

    def prepare(self, episodes: Sequence[Episode]) -> None:
        """Ask the chat model about every episode not asked about yet (in batches of ``episodes_per_call``)."""
        self.base.prepare(episodes)
        todo = list({(e.id, e.version): e for e in episodes if (e.id, e.version) not in self._cache}.values())
        for start in range(0, len(todo), self.episodes_per_call):
            batch = todo[start : start + self.episodes_per_call]
            pairs = self.generate(batch)
            for e in batch:
                self._cache[(e.id, e.version)] = [p for p in pairs if p.episode_id == e.id]
        while len(self._cache) > self.cache_size:
            self._cache.pop(next(iter(self._cache)))

    def synthesize(self, episodes: Sequence[Episode]) -> list[QAExample]:
        self.prepare(episodes)
        generated = [p for e in episodes for p in self._cache.get((e.id, e.version), [])]
        return list(self.base.synthesize(episodes)) + generated

    def probes(self, episodes: Sequence[Episode]) -> list[QAExample]:
        return self.base.probes(episodes)

    def generate(self, batch: Sequence[Episode]) -> list[QAExample]:
        """One chat-model request for a batch of episodes; the checked pairs it returned."""
        from langchain_core.messages import HumanMessage, SystemMessage

        turns = "\n".join(f"[{n}] ({spoken_date(e)}) {e.speaker or 'The user'}: {e.text}" for n, e in enumerate(batch, 1))
        messages = [SystemMessage(INSTRUCTIONS.format(n=self.questions_per_episode)), HumanMessage(turns)]
        try:
            reply = self.chat_model.invoke(messages)
        except Exception as exc:
            raise SynthesisError(
                f"the QA chat model {type(self.chat_model).__name__} failed: {exc}; nothing was consolidated — "
                "fix the model (or pass synthesizer=None for templates) and run again"
            ) from exc
        self.stats.calls += 1
        return self.parse(_text(reply), batch)

    def parse(self, text: str, batch: Sequence[Episode]) -> list[QAExample]:
        """The well-formed, grounded, distinct pairs in a reply, at most ``questions_per_episode`` per episode."""
        out: list[QAExample] = []
        seen: set[str] = set()
        per_episode: dict[str, int] = {}
        for raw in _OBJECT.findall(text):
            pair = self._check(raw, batch)
            if isinstance(pair, str):
                self.stats.reject(pair)
                continue
            key = pair.question.lower()
            if key in seen or per_episode.get(pair.episode_id, 0) >= self.questions_per_episode:
                self.stats.reject("duplicate or over quota")
                continue
            seen.add(key)
            per_episode[pair.episode_id] = per_episode.get(pair.episode_id, 0) + 1
            out.append(pair)
        self.stats.accepted += len(out)
        return out

    def _check(self, raw: str, batch: Sequence[Episode]) -> QAExample | str:
        """The pair, or why it was rejected."""
        try:
            obj = json.loads(raw)
        except ValueError:
            return "not JSON"
        turn, question, answer = obj.get("turn"), obj.get("question"), obj.get("answer")
        if isinstance(turn, str) and turn.strip().isdigit():
            turn = int(turn)
        if not isinstance(turn, int) or not 1 <= turn <= len(batch):
            return "no such turn"
        if not isinstance(question, str) or not isinstance(answer, str) or not question.strip() or not answer.strip():
            return "missing question or answer"
        if len(answer.split()) > self.max_answer_words:
            return "answer too long"
        episode = batch[turn - 1]
        if grounding(answer, f"{episode.text} {spoken_date(episode)} {episode.speaker or ''}") < self.min_grounding:
            return "answer not grounded in the turn"
        question = question.strip()
        return QAExample(question if question.endswith("?") else question + "?", answer.strip(), episode.id, "generated")


def grounding(answer: str, source: str) -> float:
    """Share of the answer's content words found in the source (1.0 for an answer of stop words only)."""
    have = set(_WORD.findall(source.lower()))
    words = [w for w in _WORD.findall(answer.lower()) if w not in STOP_WORDS]
    return sum(w in have for w in words) / len(words) if words else 1.0


def _text(reply: Any) -> str:
    content = getattr(reply, "content", reply)
    if isinstance(content, list):  # content blocks
        content = " ".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return content if isinstance(content, str) else str(content)
