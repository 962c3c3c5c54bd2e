"""What every framework integration shares; imports no framework.

* :func:`turn_episodes` - a human turn and the reply to it as episodes, written together once the reply
  exists. Writing the question earlier would put it in memory before it is answered, where retrieval
  finds it first (a cosine of 1.0 with itself) and the relevance margin then drops the real evidence.
* :func:`namespace_of` / :func:`read_scope` - a namespace given as ``user[/agent[/session]]`` and the
  scope an answer reads from (the user/agent, like the router).
* :func:`recall` - the relevant episodes for a question, as text for another model's prompt.
* :func:`route_info` / :func:`hit_metadata` - the JSON-friendly facts frameworks attach to results.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from agent_memory.errors import ValidationError
from agent_memory.memory import AgentMemory, Answer
from agent_memory.prompting import format_episode
from agent_memory.store import NewEpisode
from agent_memory.store.episodic import MAX_K
from agent_memory.types import Namespace, SearchHit

def namespace_of(value: Any, field: str = "namespace") -> Namespace:
    """A :class:`Namespace` from itself or ``user[/agent[/session]]``, with the field named on error."""
    if isinstance(value, Namespace):
        return value
    if not isinstance(value, str):
        raise ValidationError(field, f"expected 'user[/agent[/session]]', got {type(value).__name__}",
                              "pass a string like 'maria/assistant/s1'")
    return Namespace.parse(value)


def read_scope(namespace: Namespace) -> Namespace:
    """Where answers look: every session of the namespace's user/agent (the session is only the current one)."""
    return Namespace(namespace.user_id, namespace.agent_id)


def turn_episodes(
    namespace: Namespace,
    human: str | None,
    reply: str | None,
    *,
    asked_at: datetime | None = None,
    user_speaker: str = "",
    agent_speaker: str = "",
) -> list[NewEpisode]:
    """The episodes of one turn (blank parts left out), the reply timestamped after the question."""
    now = datetime.now(timezone.utc)
    asked_at = asked_at or now
    episodes = []
    if human and human.strip():
        episodes.append(NewEpisode(human, namespace, timestamp=asked_at, speaker=user_speaker, role="user"))
    if reply and reply.strip():
        replied_at = max(now, asked_at + timedelta(microseconds=1))
        episodes.append(NewEpisode(reply, namespace, timestamp=replied_at, speaker=agent_speaker, role="assistant"))
    return episodes


def recall(memory: AgentMemory, question: str, scope: Namespace, k: int, *, exclude: Iterable[str] = ()) -> list[SearchHit]:
    """Relevant episodes for ``question`` in ``scope``, best first, skipping texts already in the prompt.

    Relevant as the router counts it: score >= ``min_score`` and within ``relevance_margin`` of the best
    (after the skipped ones, so the conversation itself never crowds out older memories).
    """
    if not question.strip():
        return []
    skip = {t.strip() for t in exclude}
    hits = [h for h in memory.search(question, scope, min(MAX_K, k + len(skip))) if h.episode.text.strip() not in skip][:k]
    if not hits:
        return []
    settings = memory.config.router
    cutoff = max(settings.min_score, hits[0].score - settings.relevance_margin)
    return [h for h in hits if h.score >= cutoff]


def memory_lines(hits: Iterable[SearchHit]) -> str:
    """``[date] speaker: text`` lines, oldest first (as the RAG prompt writes them)."""
    return "\n".join(format_episode(e) for e in sorted((h.episode for h in hits), key=lambda e: e.timestamp))


def route_info(result: Answer) -> dict[str, Any]:
    """How an answer was produced: route, modules, reason, evidence ids, prompt tokens, latency."""
    return {
        "route": result.route,
        "modules": result.modules,
        "reason": result.reason,
        "evidence": [h.episode.id for h in result.evidence],
        "prompt_tokens": result.prompt_tokens,
        "latency_ms": {k: round(v, 2) for k, v in result.latency_ms.items()},
    }


def hit_metadata(hit: SearchHit) -> dict[str, Any]:
    """A search hit's fields except its text, with the episode's own metadata flattened in under ``meta_``."""
    data = hit.to_dict()
    del data["text"]
    extra = data.pop("metadata")
    data.update({f"meta_{k}": v for k, v in extra.items()})
    return data


def clip(text: str, *, stop: list[str] | None = None, max_tokens: int | None = None, tokenizer: Any = None) -> str:
    """Cut a generated answer at the first stop sequence and to ``max_tokens`` tokens of ``tokenizer``."""
    for s in stop or ():
        if s and s in text:
            text = text[: text.index(s)]
    if max_tokens is not None and tokenizer is not None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_tokens:
            text = tokenizer.decode(ids[:max_tokens], skip_special_tokens=True)
    return text.strip()
