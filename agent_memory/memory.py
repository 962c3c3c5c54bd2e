"""AgentMemory: the one object an agent holds. It delegates; the parts do the work."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

from agent_memory.backbone import Backbone
from agent_memory.config import MemoryConfig
from agent_memory.embedder import Embedder, OnnxEmbedder, SentenceTransformerEmbedder
from agent_memory.errors import ValidationError
from agent_memory.prompting import fit_episodes, rag_messages
from agent_memory.registry import AdapterRegistry
from agent_memory.store import EpisodicStore, NewEpisode
from agent_memory.types import Episode, Namespace, SearchHit

NamespaceLike = Namespace | str


@dataclass(frozen=True)
class Answer:
    """What :meth:`AgentMemory.answer` returns: the text and how it was produced."""

    text: str
    route: str
    evidence: list[SearchHit]
    prompt_tokens: int
    latency_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.text,
            "route": self.route,
            "evidence": [h.to_dict() for h in self.evidence],
            "prompt_tokens": self.prompt_tokens,
            "latency_ms": {k: round(v, 2) for k, v in self.latency_ms.items()},
        }


def as_namespace(value: NamespaceLike) -> Namespace:
    """Accept a Namespace or its ``user[/agent[/session]]`` string form."""
    if isinstance(value, Namespace):
        return value
    if isinstance(value, str):
        return Namespace.parse(value)
    raise ValidationError("namespace", f"expected Namespace or str, got {type(value).__name__}", "pass 'user/agent/session'")


class AgentMemory:
    """Episodic memory plus the backbone that answers from it."""

    def __init__(
        self,
        store: EpisodicStore,
        backbone: Backbone | None = None,
        config: MemoryConfig | None = None,
        registry: AdapterRegistry | None = None,
    ):
        self.store = store
        self.config = config or MemoryConfig()
        self._backbone = backbone
        self.registry = registry or AdapterRegistry(Path(self.config.home) / "modules")

    @classmethod
    def open(
        cls,
        home: str | Path | None = None,
        *,
        server_url: str | None = None,
        embedder: Embedder | None = None,
        config: MemoryConfig | None = None,
    ) -> "AgentMemory":
        """Open (or create) the memory in ``home``: embedded Chroma there, or a Chroma server."""
        config = config or MemoryConfig()
        if home:
            config = replace(config, home=str(home))
        if server_url:
            config = replace(config, store=replace(config.store, server_url=server_url))
        embedder = embedder or _embedder_from(config.embedder)
        if config.store.server_url:
            store = EpisodicStore.server(config.store.server_url, embedder, config.store)
        else:
            store = EpisodicStore.embedded(Path(config.home) / "store", embedder, config.store)
        return cls(store, config=config)

    @property
    def backbone(self) -> Backbone:
        """The answering model, loaded on first use (adding and searching never need it)."""
        if self._backbone is None:
            self._backbone = Backbone.load(self.config.backbone)
        return self._backbone

    # -- episodic memory --------------------------------------------------------------------------
    def add(
        self,
        text: str,
        namespace: NamespaceLike,
        *,
        speaker: str = "",
        role: str = "user",
        timestamp: datetime | str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Episode:
        return self.store.add(
            text, as_namespace(namespace), speaker=speaker, role=role, timestamp=timestamp, metadata=metadata or {}
        )

    def add_many(self, items: Sequence[NewEpisode]) -> list[Episode]:
        return self.store.add_many(items)

    def search(self, query: str, namespace: NamespaceLike, k: int | None = None, **kwargs: Any) -> list[SearchHit]:
        return self.store.search(query, as_namespace(namespace), self.config.retrieval_k if k is None else k, **kwargs)

    def get(self, episode_id: str, namespace: NamespaceLike) -> Episode:
        return self.store.get(episode_id, as_namespace(namespace))

    def list(self, namespace: NamespaceLike, **kwargs: Any) -> list[Episode]:
        return self.store.list(as_namespace(namespace), **kwargs)

    def update(self, episode_id: str, namespace: NamespaceLike, **changes: Any) -> Episode:
        return self.store.update(episode_id, as_namespace(namespace), **changes)

    def history(self, episode_id: str, namespace: NamespaceLike) -> list[Episode]:
        return self.store.history(episode_id, as_namespace(namespace))

    def delete(self, episode_ids: str | Sequence[str], namespace: NamespaceLike) -> int:
        return self.store.delete(episode_ids, as_namespace(namespace))

    # -- answering --------------------------------------------------------------------------------
    def answer(
        self, question: str, namespace: NamespaceLike, *, k: int | None = None, budget_tokens: int = 1024
    ) -> Answer:
        """Answer with retrieval: the top-k episodes (dated) in the prompt of the backbone."""
        timings: dict[str, float] = {}
        started = time.perf_counter()
        hits = self.search(question, namespace, k)
        timings["retrieve"] = (time.perf_counter() - started) * 1000
        backbone = self.backbone
        kept = fit_episodes([h.episode for h in hits], budget_tokens, backbone.count_tokens)
        evidence = [h for h in hits if h.episode in kept]
        messages = rag_messages(question, kept)
        prompt_tokens = backbone.count_tokens(backbone.format_chat(messages))
        started = time.perf_counter()
        text = backbone.generate(messages, max_new_tokens=self.config.backbone.max_new_tokens)
        timings["generate"] = (time.perf_counter() - started) * 1000
        return Answer(text, "rag" if kept else "none", evidence, prompt_tokens, timings)

    # -- consolidation ----------------------------------------------------------------------------
    def consolidate(self, namespace: NamespaceLike, config: Any = None, *, progress: bool = False):
        """Distill the namespace's pending episodes into LoRA modules (see agent_memory.consolidation)."""
        from agent_memory.consolidation import Consolidator

        consolidator = Consolidator(self.store, self.backbone, self.registry, config, progress=progress)
        return consolidator.run(as_namespace(namespace))

    def delete_module(self, module_id: str) -> None:
        """Delete a module; the episodes it had absorbed become pending again."""
        info = self.registry.delete(module_id)
        scope = Namespace(info.user_id, info.agent_id)
        mine = [e.id for e in self.store.list(scope) if e.absorbed_by == module_id]
        self.store.mark_absorbed(mine, scope, None)

    def info(self) -> dict[str, Any]:
        namespaces = self.store.namespaces()
        return {
            "home": self.config.home,
            "backend": self.store.backend.kind,
            "server_url": self.config.store.server_url,
            "embedder": self.store.embedder.name,
            "embedding_dimension": self.store.embedder.dimension,
            "backbone": self.config.backbone.model,
            "episodes": self.store.count(),
            "users": sorted({n.user_id for n in namespaces}),
            "namespaces": [str(n) for n in namespaces],
        }


def _embedder_from(spec: str) -> Embedder:
    if spec == "bundled":
        return OnnxEmbedder.bundled()
    return SentenceTransformerEmbedder.from_path(spec)
