"""Where a reliability check runs: the in-memory twin, embedded Chroma, or a Chroma server.

A check gets a memory home (``config.json`` naming its collection prefix and backbone, so the
CLI opened on the same home sees the same store) and, for server mode, a ``chroma run`` it
starts itself unless it is handed a URL.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

MODES = ("memory", "embedded", "server")


def parse_modes(text: str | Sequence[str], allowed: Sequence[str] = MODES) -> list[str]:
    """``"memory,embedded"`` -> ``["memory", "embedded"]``; an unknown mode raises ValueError naming it."""
    from agent_memory.errors import ValidationError

    modes = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    bad = [m for m in modes if m not in allowed]
    if bad or not modes:
        raise ValidationError("modes", f"{bad or text!r} is not a list of modes", f"use some of {','.join(allowed)}")
    return modes


def server_url(mode: str, workdir: Path, stack: ExitStack, given: str | None = None) -> str | None:
    """The Chroma server URL for ``mode`` (``None`` unless it is ``server``); starts one in ``workdir`` if not given."""
    from agent_memory.store.server import ChromaServer

    if mode != "server":
        return None
    if given:
        return given
    return stack.enter_context(ChromaServer(workdir / "chroma-server")).url


@dataclass
class OpenedHome:
    """A memory home opened for a check: the AgentMemory and the CLI's global arguments (None: no CLI)."""

    memory: Any
    cli_args: list[str] | None
    prefix: str


def open_home(mode: str, home: Path, embedder, *, url: str | None = None, backbone: str | None = None) -> OpenedHome:
    """An AgentMemory on a fresh collection prefix in ``home``; the backbone (if any) answers with 4 new tokens."""
    from agent_memory.config import MemoryConfig, StoreConfig
    from agent_memory.memory import AgentMemory
    from agent_memory.store import EpisodicStore

    prefix = f"rel{uuid.uuid4().hex[:10]}"
    home.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {"store": {"collection_prefix": prefix}}
    if backbone:
        settings["backbone"] = {"model": backbone, "dtype": "float32", "device": "cpu", "max_new_tokens": 4}
    (home / "config.json").write_text(json.dumps(settings))
    if mode == "memory":
        config = MemoryConfig.from_dict({**settings, "home": str(home)})
        store = EpisodicStore.in_memory(embedder, StoreConfig(collection_prefix=prefix))
        return OpenedHome(AgentMemory(store, config=config), None, prefix)
    memory = AgentMemory.open(home, server_url=url, embedder=embedder)
    return OpenedHome(memory, ["--home", str(home)] + (["--server", url] if url else []), prefix)


def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / max in milliseconds of durations in seconds (empty: zeros)."""
    if not samples_s:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "max_ms": 0.0, "n": 0}
    ms = sorted(s * 1000 for s in samples_s)
    return {"p50_ms": round(statistics.median(ms), 2), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2),
            "max_ms": round(ms[-1], 2), "n": len(ms)}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # torch missing or broken: report no GPU rather than fail a check
        gpu = None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpus": cpus,
            "gpu": gpu}


def capped(violations: list[str], limit: int = 200) -> list[str]:
    """At most ``limit`` violation lines, with a last line counting the rest (JSON stays readable)."""
    if len(violations) <= limit:
        return violations
    return violations[:limit] + [f"... and {len(violations) - limit} more"]
