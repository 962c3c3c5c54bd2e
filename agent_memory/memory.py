"""AgentMemory: the one object an agent holds. It delegates; the parts do the work."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

from agent_memory.backbone import Backbone
from agent_memory.config import MemoryConfig, default_home
from agent_memory.embedder import Embedder, OnnxEmbedder, SentenceTransformerEmbedder
from agent_memory.errors import AgentMemoryError, ValidationError
from agent_memory.prompting import fit_episodes, icl_messages, rag_messages, recent_turns
from agent_memory.registry import AdapterRegistry, BackboneMismatchError, ModuleInfo
from agent_memory.router import RouteDecision, Router
from agent_memory.store import EpisodicStore, NewEpisode
from agent_memory.types import Episode, Namespace, SearchHit

NamespaceLike = Namespace | str


@dataclass(frozen=True)
class Answer:
    """What :meth:`AgentMemory.answer` returns: the text and the routing decision that produced it."""

    text: str
    decision: RouteDecision
    prompt_tokens: int
    latency_ms: dict[str, float] = field(default_factory=dict)

    @property
    def route(self) -> str:
        return self.decision.route

    @property
    def modules(self) -> list[str]:
        return list(self.decision.modules)

    @property
    def evidence(self) -> list[SearchHit]:
        return list(self.decision.evidence)

    @property
    def reason(self) -> str:
        return self.decision.reason

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.text,
            "route": self.route,
            "modules": self.modules,
            "evidence": [h.to_dict() for h in self.evidence],
            "recent": [e.id for e in self.decision.recent],
            "reason": self.reason,
            "features": self.decision.features.to_dict(),
            "policy": self.decision.policy,
            "prompt_tokens": self.prompt_tokens,
            "latency_ms": {k: round(v, 2) for k, v in self.latency_ms.items()},
        }


@dataclass
class ForgetReport:
    """What :meth:`AgentMemory.forget` removed."""

    episodes: int = 0
    modules_dropped: list[str] = field(default_factory=list)
    episodes_released: int = 0
    modules_retrained: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"episodes_deleted": self.episodes, "modules_dropped": self.modules_dropped,
                "episodes_released": self.episodes_released, "modules_retrained": self.modules_retrained}


class ConsolidationBusyError(AgentMemoryError):
    """Another process (or the scheduler) is consolidating this memory home right now."""


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
        *,
        synthesizer: Any = None,
    ):
        self.store = store
        self.synthesizer = synthesizer
        """What writes consolidation's training QA: None for the offline templates, or e.g. a
        ``ChatModelSynthesizer`` over a stronger LangChain chat model (used by scheduled runs too)."""
        self.config = config or MemoryConfig()
        self._backbone = backbone
        self.registry = registry or AdapterRegistry(Path(self.config.home) / "modules")
        self.router = Router(store, self.registry, self.config.router)
        self._adapters = None
        # one model, many callers (framework executors, a web server's threads): activating modules, merging
        # them into the weights and generating, or training on the model, happen one at a time
        self._model_lock = threading.RLock()

    @classmethod
    def open(
        cls,
        home: str | Path | None = None,
        *,
        server_url: str | None = None,
        embedder: Embedder | None = None,
        config: MemoryConfig | None = None,
    ) -> "AgentMemory":
        """Open (or create) the memory in ``home``: embedded Chroma there, or a Chroma server.

        Without ``config``, ``HOME/config.json`` (a MemoryConfig dict) is used when present; its ``home`` is ignored.
        """
        if config is None:
            where = Path(home or default_home())
            settings = where / "config.json"
            config = replace(MemoryConfig.from_file(settings), home=str(where)) if settings.is_file() else MemoryConfig()
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
    @property
    def adapters(self):
        """Resident memory modules on the backbone (loaded on first use, kept for every later answer)."""
        from agent_memory.adapters import ResidentAdapters

        if self._adapters is None:
            self._adapters = ResidentAdapters(self.backbone, self.registry, capacity=self.config.resident_modules)
        return self._adapters

    def answer(
        self,
        question: str,
        namespace: NamespaceLike,
        *,
        k: int | None = None,
        budget_tokens: int = 1024,
        route: str | None = None,
        max_new_tokens: int | None = None,
    ) -> Answer:
        """Answer from memory: the router picks none / icl / rag / adapter / a hybrid and says why.

        ``route`` forces a route (evals compare them); ``budget_tokens`` bounds the memory in the prompt;
        ``max_new_tokens`` bounds the answer (default: the backbone config's). Safe to call from several threads:
        retrieval and routing run concurrently, the model work one call at a time.
        """
        from agent_memory.adapters import CorruptModuleError

        ns = as_namespace(namespace)
        timings: dict[str, float] = {}
        decision = self.router.decide(question, ns, self.config.retrieval_k if k is None else k, route=route,
                                      timings=timings)
        if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
            raise ValidationError("max_new_tokens", f"expected a positive int, got {max_new_tokens!r}",
                                  "pass e.g. max_new_tokens=64, or leave it out for the backbone config's")
        backbone = self.backbone
        with self._model_lock:
            started = time.perf_counter()
            try:
                self.adapters.activate(self.router.modules_for(decision, ns))
            except (CorruptModuleError, BackboneMismatchError) as exc:
                if isinstance(exc, CorruptModuleError):  # unreadable: set aside, its episodes pending again
                    self.delete_module(exc.module_id, quarantine=str(exc))
                decision = self.router.without_modules(decision, f"{exc}")
                self.adapters.deactivate()
            timings["activate"] = (time.perf_counter() - started) * 1000
            prompt, decision = self._prompt(question, decision, budget_tokens)
            started = time.perf_counter()
            try:
                with self.adapters.merged() as merge_ms:
                    text = backbone.complete([prompt], max_new_tokens=max_new_tokens or self.config.backbone.max_new_tokens)[0]
            finally:
                self.adapters.deactivate()
            timings["merge"] = merge_ms
            timings["generate"] = (time.perf_counter() - started) * 1000
        return Answer(text, decision, backbone.count_tokens(prompt), timings)

    def _prompt(self, question: str, decision: RouteDecision, budget_tokens: int) -> tuple[str, RouteDecision]:
        """The prompt a route implies, and the decision trimmed to what fit the budget.

        The adapter route uses the short prompt that modules were trained with.
        """
        backbone = self.backbone
        if decision.route.endswith("icl"):
            turns = recent_turns(list(decision.recent), budget_tokens, backbone.count_tokens)
            kept = {e.id for e in turns}
            decision = replace(decision, recent=tuple(turns),
                               evidence=tuple(h for h in decision.evidence if h.episode.id in kept))
            return backbone.format_chat(icl_messages(question, turns)), decision
        if decision.route.endswith("rag"):
            episodes = fit_episodes([h.episode for h in decision.evidence], budget_tokens, backbone.count_tokens)
            decision = replace(decision, evidence=decision.evidence[: len(episodes)])
            return backbone.format_chat(rag_messages(question, episodes)), decision
        if decision.route == "adapter":
            return backbone.qa_prompt(question), decision
        return backbone.format_chat([{"role": "user", "content": question}]), decision

    # -- consolidation ----------------------------------------------------------------------------
    def consolidate(self, namespace: NamespaceLike, config: Any = None, *, progress: bool = False):
        """Distill the namespace's pending episodes into LoRA modules (see agent_memory.consolidation).

        Takes the home's consolidation lock, like the scheduler does, so a manual run never overlaps a scheduled one.
        """
        from agent_memory.consolidation import Consolidator, HomeLock

        lock = HomeLock(self.config.home)
        if not lock.acquire():
            holder = lock.holder() or {}
            raise ConsolidationBusyError(
                f"another consolidation is running in {self.config.home} (pid {holder.get('pid', '?')}); "
                "wait for it to finish (agent-memory schedule status shows it) and run again"
            )
        try:
            with self._model_lock:  # training puts LoRA layers on the same model that answers
                consolidator = Consolidator(self.store, self.backbone, self.registry, config, self.synthesizer,
                                            progress=progress)
                return consolidator.run(as_namespace(namespace))
        finally:
            lock.release()

    def delete_module(self, module_id: str, *, quarantine: str | None = None) -> ModuleInfo:
        """Delete a module (or quarantine it, with the reason); the episodes it had absorbed become pending again."""
        info = self.registry.delete(module_id, quarantine=quarantine)
        if self._adapters is not None:
            self._adapters.forget(module_id)
        scope = Namespace(info.user_id, info.agent_id)
        mine = [e.id for e in self.store.list(scope) if e.absorbed_by == module_id]
        self.store.mark_absorbed(mine, scope, None)
        return info

    def forget(
        self,
        namespace: NamespaceLike,
        *,
        episode_ids: Sequence[str] | None = None,
        retrain: bool = True,
        config: Any = None,
    ) -> ForgetReport:
        """Remove episodes and every parametric trace of them.

        ``namespace`` alone forgets a whole user (or one agent, or one session); with ``episode_ids``
        only those (every id must lie in the namespace, or nothing is touched). Each module that absorbed
        a forgotten episode is dropped first, so no answer can come from it, and its other episodes
        become pending; with ``retrain`` they are consolidated again at once (else by the next nightly run).
        Forgetting a whole user drops their collections and module folders and nothing of anyone else's.
        """
        ns = as_namespace(namespace)
        if episode_ids is None and ns.agent_id is None:
            modules = self.registry.delete_user(ns.user_id)
            for module_id in modules:
                if self._adapters is not None:
                    self._adapters.forget(module_id)
            return ForgetReport(episodes=self.store.delete_user(ns.user_id), modules_dropped=modules)
        if episode_ids is None:
            doomed = self.store.list(ns)
        else:
            ids = [episode_ids] if isinstance(episode_ids, str) else list(episode_ids)
            doomed = [self.store.get(i, ns) for i in ids]  # NotFoundError before anything is touched
        gone = {e.id for e in doomed}
        report = ForgetReport()
        # every module holding a forgotten episode: its owner now, or one that learned an older version
        holders = {e.absorbed_by for e in doomed if e.absorbed_by}
        holders |= {m.id for m in self.registry.list(ns.user_id) if gone & set(m.episode_ids)}
        for module_id in sorted(holders):
            info = self.delete_module(module_id)
            report.modules_dropped.append(module_id)
            report.episodes_released += len(set(info.episode_ids) - gone)
        report.episodes = self.store.delete([e.id for e in doomed], Namespace(ns.user_id)) if doomed else 0
        if retrain and report.modules_dropped:
            for agent in sorted({e.namespace.agent_id for e in doomed}):
                result = self.consolidate(Namespace(ns.user_id, agent), config)
                report.modules_retrained += [m.id for m in result.modules]
        return report

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
