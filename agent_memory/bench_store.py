"""``agent-memory bench store``: latency and throughput of the episodic store.

Measures, per backend (Chroma embedded, Chroma server, and the in-memory exact
scan as the baseline): single ``add`` p50/p95 (embedding included), batched add
throughput, and namespace-scoped ``search`` p50/p95 at each store size. Figures
are printed and returned; nothing is asserted.
"""

from __future__ import annotations

import platform
import random
import statistics
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from agent_memory.embedder import Embedder, OnnxEmbedder, SentenceTransformerEmbedder
from agent_memory.store import EpisodicStore, NewEpisode
from agent_memory.store.server import ChromaServer
from agent_memory.types import Namespace

USERS = [f"user{i}" for i in range(10)]
_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana", "Ivo", "Jun"]
_PLACES = ["Lisbon", "Oslo", "Lagos", "Kyoto", "Lima", "Quito", "Hanoi", "Cairo", "Perth", "Tartu"]
_THINGS = ["hiking", "a new job", "her sister", "the garden", "a concert", "painting", "a cat", "chess", "running", "a book"]
BATCH = 256


def synthetic_episodes(n: int, seed: int) -> list[NewEpisode]:
    """Varied one-line turns spread over 10 users x 5 sessions, a day apart."""
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    out = []
    for i in range(n):
        who, place, thing = rng.choice(_NAMES), rng.choice(_PLACES), rng.choice(_THINGS)
        text = f"{who} talked about {thing} in {place} on day {i % 365} (note {i})."
        ns = Namespace(rng.choice(USERS), "agent", f"s{rng.randrange(5)}")
        out.append(NewEpisode(text, ns, timestamp=start + timedelta(hours=i), speaker=who))
    return out


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return {"p50_ms": round(statistics.median(ms), 3), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 3), "n": len(ms)}


def _timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_backend(store: EpisodicStore, sizes: list[int], queries: int, adds: int, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    singles = synthetic_episodes(adds, seed + 1)
    it = iter(singles)
    store.add_many(synthetic_episodes(8, seed + 2))  # warm-up: first calls compile and allocate
    single = _percentiles(_timed(lambda: store.add_many([next(it)]), adds))
    result: dict[str, Any] = {"single_add": single, "search": {}}
    corpus = synthetic_episodes(max(sizes), seed + 3)
    loaded, batch_time = store.count(), 0.0
    for size in sorted(sizes):
        todo = corpus[max(0, loaded - adds - 8) : max(0, size - adds - 8)]
        for start in range(0, len(todo), BATCH):
            t = time.perf_counter()
            store.add_many(todo[start : start + BATCH])
            batch_time += time.perf_counter() - t
        loaded = store.count()
        words = [f"{rng.choice(_THINGS)} in {rng.choice(_PLACES)}" for _ in range(queries)]
        qs = iter(words)
        lat = _timed(lambda: store.search(next(qs), Namespace(rng.choice(USERS)), 5), queries)
        result["search"][str(size)] = {**_percentiles(lat), "episodes": loaded}
    added = max(0, loaded - adds - 8)
    result["batched_add"] = {
        "episodes_per_s": round(added / batch_time, 1) if batch_time else None,
        "batch_size": BATCH,
    }
    single_rate = 1000.0 / single["p50_ms"]
    if result["batched_add"]["episodes_per_s"]:
        result["batched_add"]["ratio_vs_single_adds"] = round(result["batched_add"]["episodes_per_s"] / single_rate, 2)
    return result


def run_store_benchmark(
    sizes: list[int], modes: list[str], queries: int = 200, adds: int = 200, echo: Callable[[str], None] = print,
    embedder: Embedder | None = None,
) -> dict[str, Any]:
    embedder = embedder or OnnxEmbedder.bundled()
    text = ["Ana talked about hiking in Lisbon."]
    embed_lat = _percentiles(_timed(lambda: embedder.embed(text), 100))
    torch_embed = SentenceTransformerEmbedder.bundled().embed
    torch_lat = _percentiles(_timed(lambda: torch_embed(text), 100))
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": _cpus()},
        "embedder": embedder.name,
        "embed_one_text": embed_lat,
        "embed_one_text_sentence_transformers": torch_lat,
        "embed_speedup_vs_sentence_transformers": round(torch_lat["p50_ms"] / embed_lat["p50_ms"], 2),
        "backends": {},
    }
    echo(f"embedding one text: p50 {embed_lat['p50_ms']} ms (ONNX) vs {torch_lat['p50_ms']} ms (sentence-transformers)")
    for mode in ["in-memory"] + [m for m in modes if m != "in-memory"]:
        with ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="am-bench-")))
            store = _open(mode, tmp, embedder, stack)
            echo(f"[{mode}] ...")
            res = bench_backend(store, sizes, queries, adds)
            results["backends"][mode] = res
            echo(_summary(mode, res))
    base = results["backends"]["in-memory"]["search"]
    for mode, res in results["backends"].items():
        for size, row in res["search"].items():
            row["ratio_vs_in_memory_p50"] = round(row["p50_ms"] / base[size]["p50_ms"], 2)
    return results


def _open(mode: str, tmp: Path, embedder: Embedder, stack: ExitStack) -> EpisodicStore:
    if mode == "in-memory":
        return EpisodicStore.in_memory(embedder)
    if mode == "embedded":
        return EpisodicStore.embedded(tmp / "store", embedder)
    if mode == "server":
        server = stack.enter_context(ChromaServer(tmp / "server"))
        return EpisodicStore.server(server.url, embedder)
    raise ValueError(f"unknown mode {mode!r}; use embedded, server")


def _summary(mode: str, res: dict[str, Any]) -> str:
    parts = [f"single add p50 {res['single_add']['p50_ms']} ms (p95 {res['single_add']['p95_ms']})",
             f"batched add {res['batched_add']['episodes_per_s']} episodes/s"]
    parts += [f"search@{size} p50 {row['p50_ms']} ms (p95 {row['p95_ms']})" for size, row in res["search"].items()]
    return f"[{mode}] " + "; ".join(parts)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)
