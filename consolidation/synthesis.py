"""Training data for memory modules: QA pairs synthesized from episodes.

The seed paper found raw chat text recalls almost nothing, QA pairs recall well, and
QA plus summaries and rewrites best; negative questions and explicit dates matter for
temporal and adversarial questions. ``TemplateSynthesizer`` does this deterministically
and offline (no generator model needed), per episode:

* keyword QA: "What did Maria say about Biscuit?" -> the turn, dated;
* when / who QA: "When did Maria mention Biscuit?" -> "On 9 May 2023.";
* rewrites: "What do you remember about Biscuit?" -> "On 9 May 2023 Maria said: ...";
* per speaker and day, a summary: "What did Maria talk about on 9 May 2023?";
* negatives about names never mentioned: "... -> That was never discussed."

Keywords are the turn's proper nouns and numbers, else its first content words.
Held-out paraphrases (never trained on) feed the module's self-test.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol, Sequence

from agent_memory.consolidation.trainer import QAExample
from agent_memory.types import Episode

NOT_DISCUSSED = "That was never discussed."
STOP_WORDS = set(
    """a an the and or but if so of to in on at for with from by as is are was were be been am i me my we our you your
    he she it they them his her its their this that these those there here what which who whom when where why how
    just really very also too not no yes do does did have has had will would can could should about into over after
    before up down out off then than some any all much many more most own same such only big news hi hello ok okay
    oh well please thanks thank great good new last next week today yesterday tomorrow usually im i'm it's that's""".split()
)
_NEGATIVE_TOPICS = ["Zanzibar", "a saxophone", "Oskar", "the lottery", "Reykjavik", "a submarine", "Priya", "karate"]


class Synthesizer(Protocol):
    """Turns episodes into training QA (and held-out probes for the self-test)."""

    def prepare(self, episodes: Sequence[Episode]) -> None:
        """Called once with all the episodes a run will consolidate, before any ``synthesize`` (batch work goes here)."""

    def synthesize(self, episodes: Sequence[Episode]) -> list[QAExample]: ...

    def probes(self, episodes: Sequence[Episode]) -> list[QAExample]: ...


def spoken_date(e: Episode) -> str:
    """``9 May 2023``: dates written out, as LoCoMo questions ask them."""
    return f"{e.timestamp.day} {e.timestamp:%B %Y}"


def keywords(text: str, limit: int = 3) -> list[str]:
    """Proper nouns and numbers of a turn (not its first word), else its first content words."""
    words = re.findall(r"[A-Za-z][A-Za-z'-]*|\d[\d:./-]*", text)
    found: list[str] = []
    for n, w in enumerate(words):
        proper = w[0].isupper() and n > 0 and w.lower() not in STOP_WORDS
        if (proper or w[0].isdigit()) and w not in found:
            found.append(w)
    if not found:
        found = [w for w in dict.fromkeys(x.lower() for x in words) if w not in STOP_WORDS and len(w) > 2]
    return found[:limit]


@dataclass(frozen=True)
class TemplateSynthesizer:
    """Deterministic QA templates; works offline with any backbone."""

    negatives_per_module: int = 3
    """Questions about topics never discussed (answer: not discussed)."""
    summary_words: int = 60
    """Longest per-day summary answer, in words."""
    seed: int = 0
    """Seed for picking negatives."""

    def prepare(self, episodes: Sequence[Episode]) -> None:
        """Templates need no preparation."""

    def synthesize(self, episodes: Sequence[Episode]) -> list[QAExample]:
        out: list[QAExample] = []
        for e in episodes:
            who, when = e.speaker or "the user", spoken_date(e)
            for kw in keywords(e.text):
                out += [
                    QAExample(f"What did {who} say about {kw}?", e.text, e.id, "qa"),
                    QAExample(f"When did {who} mention {kw}?", f"On {when}.", e.id, "when"),
                    QAExample(f"Who mentioned {kw}?", who, e.id, "who"),
                    QAExample(f"What do you remember about {kw}?", f"On {when} {who} said: {e.text}", e.id, "rewrite"),
                ]
        out += self._summaries(episodes)
        out += self._negatives(episodes)
        return out

    def probes(self, episodes: Sequence[Episode]) -> list[QAExample]:
        """Paraphrased questions never trained on: does the module generalize past its own wording?"""
        out = []
        for e in episodes:
            who = e.speaker or "the user"
            for kw in keywords(e.text, limit=1):
                out.append(QAExample(f"Tell me what {who} said about {kw}.", e.text, e.id, "probe"))
        return out

    def _summaries(self, episodes: Sequence[Episode]) -> list[QAExample]:
        days: dict[tuple[str, str], list[Episode]] = defaultdict(list)
        for e in episodes:
            days[(e.speaker or "the user", spoken_date(e))].append(e)
        out = []
        for (who, when), group in days.items():
            words = " ".join(e.text for e in sorted(group, key=lambda e: e.timestamp)).split()
            answer = " ".join(words[: self.summary_words])
            out.append(QAExample(f"What did {who} talk about on {when}?", answer, group[0].id, "summary"))
        return out

    def _negatives(self, episodes: Sequence[Episode]) -> list[QAExample]:
        text = " ".join(e.text.lower() for e in episodes)
        speakers = sorted({e.speaker or "the user" for e in episodes})
        unused = [t for t in _NEGATIVE_TOPICS if t.lower().split()[-1] not in text]
        rng = random.Random(self.seed)
        picks = rng.sample(unused, min(self.negatives_per_module, len(unused)))
        return [QAExample(f"What did {speakers[n % len(speakers)]} say about {t}?", NOT_DISCUSSED, None, "negative")
                for n, t in enumerate(picks)]


def examples_per_episode(examples: Sequence[QAExample]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for ex in examples:
        if ex.episode_id:
            counts[ex.episode_id] += 1
    return dict(counts)
