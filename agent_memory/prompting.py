"""How remembered episodes are written into a prompt: dated, attributed, within a budget."""

from __future__ import annotations

from typing import Callable, Sequence

from agent_memory.types import Episode

SYSTEM_RAG = (
    "You answer questions about a conversation using the remembered turns below. "
    "Each turn starts with its date. If the memory does not contain the answer, say it was not discussed."
)


def format_episode(e: Episode) -> str:
    """``[2023-05-08 14:30] Maria: I moved to Lisbon.``"""
    when = e.timestamp.strftime("%Y-%m-%d %H:%M")
    who = f"{e.speaker}: " if e.speaker else ""
    return f"[{when}] {who}{e.text}"


def fit_episodes(
    episodes: Sequence[Episode], budget_tokens: int, count_tokens: Callable[[str], int]
) -> list[Episode]:
    """The longest prefix of ``episodes`` (best first) whose formatted lines fit the token budget."""
    kept, used = [], 0
    for e in episodes:
        cost = count_tokens(format_episode(e)) + 1
        if used + cost > budget_tokens:
            break
        kept.append(e)
        used += cost
    return kept


def rag_messages(question: str, episodes: Sequence[Episode]) -> list[dict[str, str]]:
    """Chat messages that put the episodes (in time order) before the question."""
    lines = "\n".join(format_episode(e) for e in sorted(episodes, key=lambda e: e.timestamp))
    return [
        {"role": "system", "content": f"{SYSTEM_RAG}\n\nMemory:\n{lines}"},
        {"role": "user", "content": question},
    ]


SYSTEM_ICL = (
    "You answer questions about the conversation below, most recent turns last. "
    "If it does not contain the answer, say it was not discussed."
)


def recent_turns(episodes: Sequence[Episode], budget_tokens: int, count_tokens: Callable[[str], int]) -> list[Episode]:
    """The latest turns (oldest first) whose formatted lines fit the token budget."""
    newest_first = fit_episodes(sorted(episodes, key=lambda e: e.timestamp, reverse=True), budget_tokens, count_tokens)
    return newest_first[::-1]


def icl_messages(question: str, turns: Sequence[Episode]) -> list[dict[str, str]]:
    """Chat messages that put the session's recent turns (in order) before the question."""
    lines = "\n".join(format_episode(e) for e in turns)
    return [
        {"role": "system", "content": f"{SYSTEM_ICL}\n\nConversation:\n{lines}"},
        {"role": "user", "content": question},
    ]
