"""Consolidator: pending episodes -> QA -> LoRA module -> self-test -> registry -> absorbed.

Order matters for safety: episodes are marked absorbed only after their module is
committed to the registry. A failure before the commit marks nothing (the staged
files are removed) and the next run retries; a crash after the commit but before
the marking is rolled forward by :meth:`Consolidator.reconcile` at the next run.
Consolidation never deletes an episode.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

from agent_memory.config import require_positive_int
from agent_memory.errors import AgentMemoryError, ConfigError
from agent_memory.registry import AdapterRegistry, ModuleInfo
from agent_memory.store import EpisodicStore
from agent_memory.types import Episode, Namespace

from agent_memory.consolidation.synthesis import Synthesizer, TemplateSynthesizer, examples_per_episode
from agent_memory.consolidation.trainer import LoraSettings, QAExample, encode_examples, train_lora


class EpisodesChangedError(AgentMemoryError):
    """Episodes a module was learning were deleted during its training; the module was dropped."""


@dataclass(frozen=True)
class ConsolidationConfig:
    """How consolidation sizes, trains and judges modules."""

    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA rank, alpha, learning rate, epochs."""
    answer_tokens_per_rank: int = 64
    """Capacity budget: answer tokens one module holds per unit of rank (r=16 -> 1024 tokens, the PhoneBook 1K
    slice that SmolLM2 r=16 memorized fully in DESIGN.md's measurement). Pending load above it opens more modules."""
    recall_floor: float = 0.5
    """A module whose self-test recall is below this is kept but marked weak."""
    self_test_size: int = 24
    """How many of its own training questions a module is asked after training (plus every held-out probe)."""
    max_new_tokens: int = 64
    """Longest self-test answer."""

    def __post_init__(self) -> None:
        require_positive_int(self, "answer_tokens_per_rank", "self_test_size", "max_new_tokens")
        if not 0 <= self.recall_floor <= 1:
            raise ConfigError("recall_floor", f"{self.recall_floor!r} is out of range", "use a value in [0, 1]")


@dataclass
class ConsolidationResult:
    """What one run did."""

    modules: list[ModuleInfo] = field(default_factory=list)
    episodes_absorbed: int = 0
    reconciled: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"modules": [m.summary() for m in self.modules], "episodes_absorbed": self.episodes_absorbed}


def normalize(text: str) -> str:
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    return re.sub(r"\s+", " ", text).strip()


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


class Consolidator:
    """Distills a namespace's pending episodes into self-tested LoRA modules."""

    def __init__(
        self,
        store: EpisodicStore,
        backbone,
        registry: AdapterRegistry,
        config: ConsolidationConfig | None = None,
        synthesizer: Synthesizer | None = None,
        progress: bool = False,
    ) -> None:
        self.store = store
        self.backbone = backbone
        self.registry = registry
        self.config = config or ConsolidationConfig()
        self.synthesizer = synthesizer or TemplateSynthesizer()
        self.progress = progress

    def run(self, namespace: Namespace, *, limit: int | None = None) -> ConsolidationResult:
        """Consolidate the pending episodes of ``namespace`` (a user, or one of their agents): all, or the oldest ``limit``."""
        result = ConsolidationResult()
        self.registry.sweep()
        result.reconciled = self.reconcile(namespace)
        by_agent: dict[str, list[Episode]] = {}
        for e in self.store.pending(namespace, limit=limit):
            by_agent.setdefault(e.namespace.agent_id, []).append(e)
        for agent, episodes in sorted(by_agent.items()):
            self.synthesizer.prepare(episodes)
            for chunk in self.plan(episodes):
                info = self._consolidate(Namespace(namespace.user_id, agent), chunk)
                result.modules.append(info)
                result.episodes_absorbed += len(chunk)
        return result

    def plan(self, episodes: Sequence[Episode]) -> list[list[Episode]]:
        """Split episodes (oldest first) into modules that each fit one module's capacity."""
        budget = self.config.answer_tokens_per_rank * self.config.lora.rank
        chunks: list[list[Episode]] = [[]]
        used = 0
        for e in episodes:
            cost = self._answer_tokens(self.synthesizer.synthesize([e]))
            if chunks[-1] and used + cost > budget:
                chunks.append([])
                used = 0
            chunks[-1].append(e)
            used += cost
        return [c for c in chunks if c]

    def reconcile(self, namespace: Namespace) -> int:
        """Roll forward a crash between commit and marking: committed modules' episodes get marked."""
        fixed = 0
        for info in self.registry.list(namespace.user_id, namespace.agent_id):
            scope = Namespace(info.user_id, info.agent_id)
            pending = {e.id: e.version for e in self.store.pending(scope)}
            todo = [i for i in info.episode_ids if i in pending]
            if todo:
                versions = info.episode_versions or {i: pending[i] for i in todo}  # older manifests: trust them
                fixed += len(self.store.mark_absorbed(todo, scope, info.id, versions=versions))
        return fixed

    def self_test(self, examples: Sequence[QAExample], probes: Sequence[QAExample]) -> float:
        """Recall with the trained adapter active: exact answers to its own questions, F1 >= 0.8 on paraphrases."""
        own = list(examples)[: self.config.self_test_size]
        asked = own + list(probes)
        answers = self.backbone.complete([self.backbone.qa_prompt(q.question) for q in asked],
                                         max_new_tokens=self.config.max_new_tokens)
        hits = [normalize(a) == normalize(q.answer) for a, q in zip(answers[: len(own)], own)]
        hits += [token_f1(a, q.answer) >= 0.8 for a, q in zip(answers[len(own):], probes)]
        return sum(hits) / len(hits) if hits else 0.0

    # -- one module -------------------------------------------------------------------------------
    def _consolidate(self, scope: Namespace, episodes: list[Episode]) -> ModuleInfo:
        examples = self.synthesizer.synthesize(episodes)
        probes = self.synthesizer.probes(episodes)
        module_id = self.registry.new_id()
        settings = self.config.lora
        with self.registry.staging() as staged:
            peft_model, report = train_lora(self.backbone, examples, settings, "default", progress=self.progress)
            try:
                recall = self.self_test(_spread(examples), probes)
                peft_model.save_pretrained(str(staged))
            finally:
                self.backbone.model = peft_model.unload()
            centroid = mean_vector(self.store.embedder.embed([e.text for e in episodes]))
            info = ModuleInfo(
                id=module_id, user_id=scope.user_id, agent_id=scope.agent_id,
                episode_ids=tuple(e.id for e in episodes),
                start=min(e.timestamp for e in episodes).isoformat(), end=max(e.timestamp for e in episodes).isoformat(),
                centroid=tuple(round(x, 6) for x in centroid), rank=settings.rank, alpha=settings.alpha,
                facts=len(episodes), examples=len(examples), train_tokens=report.train_tokens,
                params=report.trainable_params, recall=recall, weak=recall < self.config.recall_floor,
                backbone=self.backbone.name, backbone_fingerprint=self.backbone.fingerprint,
                created_at=datetime.now(timezone.utc).isoformat(),
                examples_per_episode=examples_per_episode(examples), train_seconds=round(report.seconds, 2),
                episode_versions={e.id: e.version for e in episodes},
            )
            self.registry.commit(staged, info)
        marked = self.store.mark_absorbed(list(info.episode_ids), scope, info.id, versions=info.episode_versions)
        unmarked = sorted(set(info.episode_ids) - set(marked))
        if unmarked and self.store.missing(unmarked, scope):
            # an episode was deleted while the module learned it: the module must not keep it
            self.registry.delete(info.id)
            self.store.mark_absorbed(marked, scope, None)
            raise EpisodesChangedError(
                f"episodes were deleted while module {info.id} was training; it was dropped and its other "
                f"episodes stay pending: run consolidation again"
            )
        return info

    def _answer_tokens(self, examples: Sequence[QAExample]) -> int:
        return sum(sum(1 for label in labels if label != -100) for _, labels in encode_examples(self.backbone, examples))


def mean_vector(vectors: Sequence[Sequence[float]]) -> list[float]:
    """A module's centroid: the mean of its episodes' embeddings (the router normalizes it)."""
    return [sum(col) / len(vectors) for col in zip(*vectors)]


def _spread(examples: Sequence[QAExample]) -> list[QAExample]:
    """Interleave example kinds so a truncated self-test sample covers all of them."""
    by_kind: dict[str, list[QAExample]] = {}
    for ex in examples:
        by_kind.setdefault(ex.kind, []).append(ex)
    out: list[QAExample] = []
    while any(by_kind.values()):
        for kind in list(by_kind):
            if by_kind[kind]:
                out.append(by_kind[kind].pop(0))
    return out


