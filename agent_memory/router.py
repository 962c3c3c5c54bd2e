"""The query-time router: which memory answers a question (none, ICL, RAG, adapter, or a hybrid), and why.

The router turns one question into :class:`RouteFeatures` (retrieval scores, which of the
retrieved episodes a trusted module already absorbed, which lie in the session's recent
turns, module centroid similarity and self-test recall), lets a :class:`Policy` pick the
route from those features alone, then assembles the :class:`RouteDecision`: modules to
activate, evidence for the prompt, and a sentence saying why.

Module selection follows retrieval provenance first (the top episodes -> the modules that
absorbed them), with the modules' centroid embeddings as a fallback for questions retrieval
misses. Weak modules (self-test recall under the floor) are never trusted; ``RouterConfig.min_module_recall``
moves that floor at query time.
Policies register themselves by name (:func:`register_policy`) and can be fitted on
labelled examples (:meth:`Policy.fit`).
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, ClassVar, Mapping, Sequence

from agent_memory.config import RouterConfig
from agent_memory.errors import ConfigError, ValidationError
from agent_memory.registry import AdapterRegistry, ModuleInfo
from agent_memory.store import EpisodicStore
from agent_memory.types import Episode, Namespace, SearchHit

ROUTES = ("none", "icl", "rag", "adapter", "adapter+rag", "adapter+icl")


@dataclass(frozen=True)
class RouteFeatures:
    """What a policy sees about one question. Numbers only, so policies can be fitted."""

    top_score: float = 0.0
    """Cosine similarity of the best retrieved episode (0 when nothing was retrieved)."""
    relevant: int = 0
    """Retrieved episodes scoring at least ``max(min_score, best - relevance_margin)`` (the router's config), where
    best is the score of the best retrieved episode that is not a question (of the best one when all are)."""
    relevant_absorbed: int = 0
    """Relevant episodes absorbed by the module(s) the router would activate (trusted, at most ``max_modules``)."""
    relevant_in_recent: int = 0
    """Relevant episodes not absorbed by the module(s) to be activated that lie in the session's recent-turn window."""
    provenance_modules: int = 0
    """Trusted modules that absorbed at least one relevant episode."""
    centroid_best: float = 0.0
    """Best cosine similarity between the question and a trusted module's centroid."""
    module_recall: float = 0.0
    """Self-test recall of the best candidate module (0 when there is none)."""
    weak_candidates: int = 0
    """Modules that absorbed relevant episodes but are marked weak (distrusted)."""
    recent_turns: int = 0
    """Turns in the session's recent window (ICL candidates)."""
    evidence_age_days: float = 0.0
    """Age of the best relevant episode relative to the newest episode in the window, in days."""
    asks_when: int = 0
    """1 when the question asks for a date ("When did ...", "What year ...", "In which month ..."; see
    :func:`asks_for_a_date`), else 0."""

    def to_dict(self) -> dict[str, float]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class RouteDecision:
    """How a question is answered: route, modules, evidence, and the reason."""

    route: str
    modules: tuple[str, ...] = ()
    evidence: tuple[SearchHit, ...] = ()
    recent: tuple[Episode, ...] = ()
    retrieved: tuple[SearchHit, ...] = ()
    features: RouteFeatures = field(default_factory=RouteFeatures)
    scores: Mapping[str, float] = field(default_factory=dict)
    reason: str = ""
    policy: str = "rules"

    def to_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "modules": list(self.modules),
            "evidence": [{"id": h.episode.id, "score": round(h.score, 4), "absorbed_by": h.episode.absorbed_by}
                         for h in self.evidence],
            "recent": [e.id for e in self.recent],
            "features": self.features.to_dict(),
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
            "reason": self.reason,
            "policy": self.policy,
        }


_ASKS_FOR_A_DATE = re.compile(
    r"^\W*(?:when\b|(?:in |during |on )?(?:what|which) (?:year|month|day|date|week|weekend|season)s?\b)",
    re.IGNORECASE,
)


def asks_for_a_date(question: str) -> bool:
    """Whether the question asks when something happened, by its opening words (English): "When ...",
    "What year ...", "In which month ...".

    Durations ("How long ...", "How many weeks ...") are not dates: answering them takes arithmetic over dates,
    which a module that learned "on 8 May 2023" does not do. A question that only names a date ("What did she do
    on May 3?") asks for content.
    """
    return _ASKS_FOR_A_DATE.match(question) is not None


# -- policies -------------------------------------------------------------------------------------
POLICIES: dict[str, type["Policy"]] = {}


def register_policy(name: str) -> Callable[[type["Policy"]], type["Policy"]]:
    """Class decorator: make a policy available by name (``RouterConfig.policy``)."""

    def add(cls: type[Policy]) -> type[Policy]:
        cls.name = name
        POLICIES[name] = cls
        return cls

    return add


def make_policy(name: str, **params: Any) -> "Policy":
    if name not in POLICIES:
        raise ConfigError("policy", f"{name!r} is not a registered policy", f"use one of {', '.join(sorted(POLICIES))}")
    try:
        return POLICIES[name](**params)
    except TypeError as exc:
        raise ConfigError("policy_params", f"do not fit policy {name!r}: {exc}", "pass only that policy's parameters") from exc


class Policy:
    """Picks a route from features. Subclasses implement :meth:`decide`; :meth:`fit` tunes them."""

    name: ClassVar[str] = "policy"

    def decide(self, f: RouteFeatures) -> tuple[str, str]:
        """Return ``(route, reason)``."""
        raise NotImplementedError

    def fit(self, samples: Sequence[tuple[RouteFeatures, Mapping[str, float]]]) -> "Policy":
        """Tune on ``(features, quality of each route)`` pairs, e.g. F1 per route on a dev set."""
        return self

    def params(self) -> dict[str, Any]:
        return {}


@register_policy("rules")
@dataclass
class RulePolicy(Policy):
    """The default: trust a module that absorbed the evidence; retrieve what it did not; ICL for recent turns."""

    rag_min: float = 0.2
    """Memory is used only when the best retrieved episode scores at least this (else: centroid fallback or none)."""
    centroid_min: float = 0.45
    """Module centroid similarity above which a module is used when retrieval finds nothing."""
    trust_recall: float = 0.9
    """A module at or above this self-test recall answers alone; below it, retrieval backs it up."""
    modules_for_when_only: bool = True
    """Activate modules only for questions that ask for a date (``RouteFeatures.asks_when``); the others go to
    retrieval (or recent turns). On by default: on LoCoMo chat, modules trained on the default template QA win on
    dates and lose on content, and this rule won held out on all three consolidated conversations
    (``evals/README.md``, "Calibration among adapter routes"). Turn it off for modules trained on natural QA
    (``ChatModelSynthesizer``), which answer content questions too."""

    GRID: ClassVar[dict[str, tuple[Any, ...]]] = {
        "rag_min": (0.2, 0.25, 0.3, 0.35, 0.4, 0.5),
        "centroid_min": (0.3, 0.45, 0.6, 1.01),
        "trust_recall": (0.5, 0.7, 0.9, 1.01),
        "modules_for_when_only": (False, True),
    }

    def decide(self, f: RouteFeatures) -> tuple[str, str]:
        relevant = f.top_score >= self.rag_min and f.relevant > 0
        pending = f.relevant - f.relevant_absorbed
        modules = f.provenance_modules > 0 or (not relevant and f.centroid_best >= self.centroid_min)
        held_back = modules and self.modules_for_when_only and not f.asks_when
        if modules and not held_back:
            how = (f"{f.provenance_modules} trusted module(s) absorbed relevant episodes, the one(s) activated "
                   f"{f.relevant_absorbed} of {f.relevant}" if f.provenance_modules else
                   f"retrieval found nothing above {self.rag_min} but a module's centroid matches "
                   f"({f.centroid_best:.2f} >= {self.centroid_min})")
            if pending > 0 and pending == f.relevant_in_recent:
                return "adapter+icl", f"{how}; the other {pending} are recent turns of this session"
            if pending > 0:
                return "adapter+rag", f"{how}; {pending} relevant episode(s) are not absorbed yet, so they are retrieved"
            if f.module_recall < self.trust_recall:
                return "adapter+rag", f"{how}; its self-test recall {f.module_recall:.2f} < {self.trust_recall}, so retrieval backs it up"
            return "adapter", f"{how} (self-test recall {f.module_recall:.2f}); no episode text needed"
        if relevant and held_back:
            return "rag", (f"{f.relevant} episode(s) are relevant (best {f.top_score:.2f}); trusted modules hold "
                           f"{f.relevant_absorbed} of them but answer only questions that ask for a date (modules_for_when_only)")
        if relevant:
            distrust = f"; {f.weak_candidates} weak module(s) distrusted" if f.weak_candidates else ""
            if pending == f.relevant_in_recent:
                return "icl", f"all {pending} relevant episode(s) are among the session's last {f.recent_turns} turns{distrust}"
            return "rag", f"{f.relevant} episode(s) are relevant (best {f.top_score:.2f}) and no trusted module holds them{distrust}"
        return "none", (f"nothing relevant: best episode {f.top_score:.2f} < {self.rag_min}, best module centroid "
                        f"{f.centroid_best:.2f} < {self.centroid_min}")

    def fit(self, samples: Sequence[tuple[RouteFeatures, Mapping[str, float]]]) -> "RulePolicy":
        """Grid-search the thresholds for the highest mean quality of the chosen routes.

        Among equally good thresholds, the fewest changed from the current ones win (ties keep the current):
        a threshold the samples never exercise (say, the module ones on a run without modules) stays as it was.
        """
        if not samples:
            raise ValidationError("samples", "is empty", "pass (features, {route: quality}) pairs from a dev set")
        current = self.params()
        changed = lambda params: sum(params[k] != current[k] for k in self.GRID)  # noqa: E731
        best, best_value = current, self._value(samples)
        for values in itertools.product(*self.GRID.values()):
            candidate = RulePolicy(**dict(zip(self.GRID, values)))
            value = candidate._value(samples)
            if value > best_value + 1e-12 or (value > best_value - 1e-12 and changed(candidate.params()) < changed(best)):
                best, best_value = candidate.params(), value
        for key, value in best.items():
            setattr(self, key, value)
        return self

    def _value(self, samples) -> float:
        return sum(quality.get(self.decide(f)[0], 0.0) for f, quality in samples) / len(samples)

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# -- the router -----------------------------------------------------------------------------------
class Router:
    """Features -> policy -> decision, for one namespace at a time (never reaching outside it)."""

    def __init__(self, store: EpisodicStore, registry: AdapterRegistry, config: RouterConfig | None = None,
                 policy: Policy | None = None) -> None:
        self.store = store
        self.registry = registry
        self.config = config or RouterConfig()
        self.policy = policy or make_policy(self.config.policy, **dict(self.config.policy_params))
        self._modules: dict[tuple[str, str | None], tuple[float, list[ModuleInfo], Any]] = {}

    def decide(self, question: str, namespace: Namespace, k: int, *, route: str | None = None,
               timings: dict[str, float] | None = None) -> RouteDecision:
        """Retrieve, gather features, and let the policy choose (or take ``route`` as given, for evals).

        Retrieval and modules cover the whole user (or user/agent); ``namespace.session_id``, when
        given, is the current session, whose latest turns are the ICL window.

        ``timings`` receives per-stage milliseconds: retrieve, recent, route.
        """
        import numpy as np

        if route is not None and route not in ROUTES:
            raise ValidationError("route", f"{route!r} is not a route", f"use one of {', '.join(ROUTES)}")

        timings = {} if timings is None else timings
        started = time.perf_counter()
        vector = np.asarray(self.store.embedder.embed([question])[0], dtype=np.float32)
        # long-term memory spans every session of the user/agent; the session only picks the ICL window
        scope = Namespace(namespace.user_id, namespace.agent_id)
        hits = self.store.search(question, scope, k, vector=vector.tolist())
        timings["retrieve"] = _ms(started)

        started = time.perf_counter()
        recent = self.recent(namespace)
        timings["recent"] = _ms(started)

        started = time.perf_counter()
        modules, centroids = self._module_table(namespace)
        by_id = {m.id: m for m in modules}
        floor = self.config.min_module_recall
        trusted = {m.id for m in modules if (not m.weak if floor is None else m.recall >= floor)}
        # the margin is measured from the best episode that is not itself a question: an agent records every
        # turn, so asking again finds the earlier asking at cosine ~1.0, which holds no answer and would
        # otherwise push the statement that does below the margin
        statements = [h for h in hits if not h.episode.text.rstrip().endswith("?")]
        anchor = (statements or hits)[0].score if hits else 0.0
        cutoff = max(self.config.min_score, anchor - self.config.relevance_margin)
        relevant = [h for h in hits if h.score >= cutoff]
        recent_ids = {e.id for e in recent}
        weight: dict[str, float] = {}
        for h in relevant:
            if h.episode.absorbed_by in trusted:
                weight[h.episode.absorbed_by] = weight.get(h.episode.absorbed_by, 0.0) + h.score
        similarity = centroids @ vector / (np.linalg.norm(vector) + 1e-9) if len(modules) else np.zeros(0)
        trusted_sims = [(float(s), m.id) for s, m in zip(similarity, modules) if m.id in trusted]
        centroid_best, centroid_id = max(trusted_sims, default=(0.0, None))
        chosen = self._select(weight) if weight else ([centroid_id] if centroid_id else [])
        # what the activated module(s) would hold; a relevant episode of a trusted module left out (max_modules)
        # is pending like a new one, so it is retrieved rather than lost
        absorbed = [h for h in relevant if h.episode.absorbed_by in chosen]
        pending = [h for h in relevant if h.episode.absorbed_by not in chosen]
        features = RouteFeatures(
            top_score=hits[0].score if hits else 0.0,
            relevant=len(relevant),
            relevant_absorbed=len(absorbed),
            relevant_in_recent=sum(h.episode.id in recent_ids for h in pending),
            provenance_modules=len(weight),
            centroid_best=centroid_best,
            module_recall=max((by_id[i].recall for i in chosen), default=0.0),
            weak_candidates=len({h.episode.absorbed_by for h in relevant if h.episode.absorbed_by in by_id} - trusted),
            recent_turns=len(recent),
            evidence_age_days=_age_days(relevant[0].episode, recent) if relevant else 0.0,
            asks_when=int(asks_for_a_date(question)),
        )
        forced = route is not None
        if not forced:
            route, reason = self.policy.decide(features)
            candidates = relevant
        else:
            reason, candidates = f"route {route!r} requested by the caller", hits
        if route.startswith("adapter") and not chosen:
            route = route.partition("+")[2] or "none"
            reason += "; no module of this namespace matches, so none is activated"
        use_modules = route.startswith("adapter")
        held = set(chosen) if use_modules else set()
        if route.endswith("rag"):
            # what the modules do not hold; when they hold everything, retrieval backs them up with all of it
            evidence = tuple(h for h in candidates if h.episode.absorbed_by not in held) or tuple(candidates)
        elif route.endswith("icl"):
            evidence = tuple(h for h in candidates if h.episode.id in recent_ids and h.episode.absorbed_by not in held)
        else:
            evidence = ()
        decision = RouteDecision(
            route=route,
            modules=tuple(chosen) if use_modules else (),
            evidence=evidence,
            recent=tuple(recent) if route.endswith("icl") else (),
            retrieved=tuple(hits),
            features=features,
            scores={**{f"module:{m}": w for m, w in weight.items()}, "centroid_best": centroid_best},
            reason=reason,
            policy="forced" if forced else self.policy.name,
        )
        timings["route"] = _ms(started)
        return decision

    def without_modules(self, decision: RouteDecision, why: str) -> RouteDecision:
        """The fallback when a chosen module cannot be used (corrupt, other backbone): retrieval, with the reason."""
        evidence = tuple(h for h in decision.retrieved if h.score >= self.config.min_score)
        return replace(decision, route="rag" if evidence else "none", modules=(), evidence=evidence, recent=(),
                       reason=f"{decision.reason}; but module unusable ({why}), so fell back to retrieval")

    def modules_for(self, decision: RouteDecision, namespace: Namespace) -> list[ModuleInfo]:
        """The ModuleInfo records of a decision's modules, looked up in the namespace's own table."""
        by_id = {m.id: m for m in self._module_table(namespace)[0]}
        return [by_id[i] for i in decision.modules]

    def recent(self, namespace: Namespace) -> list[Episode]:
        """The session's last ``recent_turns`` episodes, oldest first (none without a session)."""
        if namespace.session_id is None:
            return []
        return self.store.list(namespace)[-self.config.recent_turns:]

    def _select(self, weight: Mapping[str, float]) -> list[str]:
        ranked = sorted(weight.items(), key=lambda kv: -kv[1])
        top = ranked[0][1]
        return [m for m, w in ranked[: self.config.max_modules] if w >= self.config.module_share * top]

    def _module_table(self, namespace: Namespace):
        """The namespace's modules and their unit centroids, re-read only when the manifest changes."""
        import numpy as np

        key = (namespace.user_id, namespace.agent_id)
        stamp = self.registry.version(namespace.user_id, namespace.agent_id)
        cached = self._modules.get(key)
        if cached is None or cached[0] != stamp:
            modules = self.registry.list(namespace.user_id, namespace.agent_id)
            matrix = np.zeros((0, self.store.embedder.dimension), dtype=np.float32)
            if modules:
                matrix = np.asarray([m.centroid for m in modules], dtype=np.float32)
                matrix /= np.linalg.norm(matrix, axis=1, keepdims=True) + 1e-9
            cached = self._modules[key] = (stamp, modules, matrix)
        return cached[1], cached[2]


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _age_days(episode: Episode, recent: Sequence[Episode]) -> float:
    newest = max((e.timestamp for e in recent), default=episode.timestamp)
    return max(0.0, (newest - episode.timestamp).total_seconds() / 86400)


__all__ = [
    "POLICIES", "ROUTES", "Policy", "RouteDecision", "RouteFeatures", "Router", "RouterConfig", "RulePolicy",
    "make_policy", "register_policy",
]
