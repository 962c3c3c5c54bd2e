"""Load: many concurrent clients adding and searching for a while; no errors, nothing lost.

``clients`` threads start together (a barrier) and each, until the deadline, adds an episode
to its own namespace or searches its user's memory (``search_ratio`` of the calls). Embedded
mode shares one ``EpisodicStore`` (one ``PersistentClient``, one embedder) between all threads,
which is how an agent process uses it: Chroma's embedded client is meant to be shared within a
process, not opened by several processes on one folder. Server mode gives every client its own
``EpisodicStore.server`` (its own HTTP client) on one ``chroma run``; ``memory`` is the in-memory
twin. Afterwards every acknowledged add must be readable (``lost``), and every call must have
succeeded (``errors``). Latency p50/p95 per operation and throughput are reported, not judged.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from agent_memory.evals.reliability.backends import capped, machine, percentiles, server_url
from agent_memory.store import NewEpisode
from agent_memory.types import Namespace

USERS = tuple(f"load-user-{n}" for n in range(10))
_WORDS = ("hiking", "a new job", "her sister", "the garden", "a concert", "painting", "a cat", "chess", "Lisbon", "Kyoto")


@dataclass
class ClientLog:
    """What one client did: (kind, seconds, error or None) per call, and the ids its adds returned."""

    calls: list[tuple[str, float, str | None]] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)


def _client(store, n: int, deadline_box: list[float], barrier: threading.Barrier, search_ratio: float,
            log: ClientLog) -> None:
    rng = random.Random(n)
    ns = Namespace(USERS[n % len(USERS)], f"agent{n % 3}", f"s{n}")
    barrier.wait()
    i = 0
    while time.perf_counter() < deadline_box[0]:
        kind = "search" if rng.random() < search_ratio else "add"
        started = time.perf_counter()
        try:
            if kind == "add":
                log.acked.append(store.add(f"client {n} call {i}: talked about {rng.choice(_WORDS)}.", ns).id)
            else:
                store.search(f"what about {rng.choice(_WORDS)}?", Namespace(ns.user_id), rng.choice([1, 5, 10]))
            error = None
        except Exception as exc:  # a load test counts every failure; it must not stop the client
            error = f"{type(exc).__name__}: {exc}"
        log.calls.append((kind, time.perf_counter() - started, error))
        i += 1


def _stores(mode: str, clients: int, tmp: Path, stack: ExitStack, embedder, server: str | None) -> list:
    """One store per client: the same object for embedded and memory, one HTTP client each for server mode."""
    from agent_memory.config import StoreConfig
    from agent_memory.store import EpisodicStore

    config = StoreConfig(collection_prefix=f"load{uuid.uuid4().hex[:10]}")
    if mode == "memory":
        return [EpisodicStore.in_memory(embedder, config)] * clients
    if mode == "embedded":
        return [EpisodicStore.embedded(tmp / "embedded", embedder, config)] * clients
    url = server_url(mode, tmp, stack, server)
    return [EpisodicStore.server(url, embedder, config) for _ in range(clients)]


def load_backend(stores: Sequence, seconds: float, search_ratio: float = 0.5, seed_episodes: int = 200) -> dict[str, Any]:
    """Run the clients against ``stores`` (one per client); figures, and violations for errors and losses."""
    first = stores[0]
    rng = random.Random(0)
    first.add_many([NewEpisode(f"seed episode {i} about {rng.choice(_WORDS)}.",
                               Namespace(USERS[i % len(USERS)], "seed", "s0")) for i in range(seed_episodes)])
    logs = [ClientLog() for _ in stores]
    barrier = threading.Barrier(len(stores) + 1)
    deadline = [float("inf")]
    threads = [threading.Thread(target=_client, args=(s, n, deadline, barrier, search_ratio, logs[n]), daemon=True)
               for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    started = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    calls = [c for log in logs for c in log.calls]
    errors = [c for c in calls if c[2] is not None]
    acked = [i for log in logs for i in log.acked]
    stored = {e.id for user in USERS for e in first.list(Namespace(user))}
    lost = [i for i in acked if i not in stored]
    per_client = [len(log.calls) for log in logs]
    violations = [f"error: {kind} failed: {error[:200]}" for kind, _, error in errors[:50]]
    violations += [f"lost: {len(lost)} acknowledged adds are missing, e.g. {lost[:3]}"] if lost else []
    return {
        "clients": len(stores), "seconds": round(elapsed, 1), "ops": len(calls), "errors": len(errors),
        "adds": sum(c[0] == "add" for c in calls), "searches": sum(c[0] == "search" for c in calls),
        "acknowledged_adds": len(acked), "lost": len(lost), "stored_after": len(stored),
        "throughput_ops_s": round(len(calls) / elapsed, 1),
        "add": percentiles([c[1] for c in calls if c[0] == "add" and c[2] is None]),
        "search": percentiles([c[1] for c in calls if c[0] == "search" and c[2] is None]),
        "ops_per_client": {"min": min(per_client), "max": max(per_client)},
        "error_messages": sorted({e[2][:160] for e in errors})[:8],
        "violations": capped(violations),
    }


def run_load(clients: int = 50, seconds: float = 60.0, modes: Sequence[str] = ("embedded", "server"), *,
             search_ratio: float = 0.5, server: str | None = None, embedder=None,
             echo: Callable[[str], None] | None = print) -> dict[str, Any]:
    """The load check on each backend; ``server``: use this Chroma server URL instead of starting one."""
    from agent_memory.embedder import OnnxEmbedder

    echo = echo or (lambda _line: None)
    embedder = embedder or OnnxEmbedder.bundled()
    results: dict[str, Any] = {"check": "load", "machine": machine(), "clients": clients, "seconds_per_backend": seconds,
                               "search_ratio": search_ratio, "backends": {}}
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix="am-load-") as tmp, ExitStack() as stack:
            echo(f"[load/{mode}] {clients} clients for {seconds:.0f} s")
            res = load_backend(_stores(mode, clients, Path(tmp), stack, embedder, server), seconds, search_ratio)
            results["backends"][mode] = res
            echo(f"[load/{mode}] {res['ops']} ops ({res['throughput_ops_s']}/s), errors {res['errors']}, lost "
                 f"{res['lost']}; add p50 {res['add']['p50_ms']} ms p95 {res['add']['p95_ms']} ms; search p50 "
                 f"{res['search']['p50_ms']} ms p95 {res['search']['p95_ms']} ms")
    backends = results["backends"].values()
    for key in ("ops", "errors", "lost"):
        results[key] = sum(r[key] for r in backends)
    results["violations"] = [f"{mode}: {v}" for mode, r in results["backends"].items() for v in r["violations"]]
    return results
