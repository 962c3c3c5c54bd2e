"""Server faults: SIGKILL the Chroma server in the middle of a stream of adds and searches, restart it.

A real ``chroma run`` (:class:`~agent_memory.store.server.ChromaServer`) serves clients opened
with ``EpisodicStore.server(url)``: writer threads add episodes (single adds, and two-user
``add_many`` batches), searcher threads search. A controller kills the server with SIGKILL at
evenly spaced points of the stream, leaves it down for a while and starts it again on the same
port and data folder. Afterwards a fresh client reads everything back:

* every add that returned ids is present with its text (``lost`` must be 0);
* every failed call raised an ``AgentMemoryError`` (``unclear`` must be 0), after bounded retries
  with backoff: how long a failing call takes is measured (a call over ``hang_s`` is a violation);
* after each restart, operations succeed again (``recovered`` for every cycle);
* no text is stored twice. Adds that failed but whose data did land (the server wrote, then died
  before answering) are counted as ``unacknowledged_stored``: not a loss, but a caller who retries
  such an add stores it twice, which is worth knowing. A two-user batch whose second write fails
  while the server is down cannot undo its first write either (``partial_batches``); the error
  then names the ids that may remain (``partial_batches_named_in_error``).
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from agent_memory.errors import AgentMemoryError
from agent_memory.evals.reliability.backends import capped, machine, percentiles
from agent_memory.store import NewEpisode
from agent_memory.types import Namespace

USERS = ("fault-a", "fault-b", "fault-c", "fault-d")
QUERIES = ("what did I say about the stream", "episode from writer", "fault tolerance", "batch")


@dataclass
class Op:
    """One call the clients made, and how it ended."""

    kind: str
    started: float
    seconds: float
    texts: tuple[tuple[str, str], ...] = ()
    ids: tuple[str, ...] = ()
    error: str | None = None
    clear: bool = True


@dataclass
class Stream:
    """The shared state of one fault run: the ops log, the add counter, the stop flag."""

    ops_target: int
    log: list[Op] = field(default_factory=list)
    started_adds: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_add(self) -> int | None:
        with self.lock:
            if self.started_adds >= self.ops_target:
                return None
            self.started_adds += 1
            return self.started_adds - 1

    def record(self, op: Op) -> None:
        with self.lock:
            self.log.append(op)


def _timed(kind: str, fn: Callable[[], Any], texts=()) -> Op:
    started = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # every failure is recorded; only AgentMemoryError counts as clear
        return Op(kind, started, time.perf_counter() - started, texts, error=f"{type(exc).__name__}: {exc}",
                  clear=isinstance(exc, AgentMemoryError))
    ids = tuple(e.id for e in result) if kind != "search" else ()
    return Op(kind, started, time.perf_counter() - started, texts, ids)


def _writer(stream: Stream, store, worker: int) -> None:
    rng = random.Random(worker)
    while (n := stream.next_add()) is not None:
        if n % 5 == 4:  # a batch across two users: all or none is promised
            users = rng.sample(USERS, 2)
            texts = tuple((u, f"fault stream batch {n} part {j} for {u}.") for j, u in enumerate(users))
            items = [NewEpisode(t, Namespace(u, "agent", "s1")) for u, t in texts]
            stream.record(_timed("batch", lambda: store.add_many(items), texts))
        else:
            user = rng.choice(USERS)
            text = f"fault stream episode {n} from writer {worker} for {user}."
            stream.record(_timed("add", lambda: [store.add(text, Namespace(user, "agent", "s1"))], ((user, text),)))


def _searcher(stream: Stream, store, worker: int) -> None:
    rng = random.Random(1000 + worker)
    while not stream.stop.is_set():
        query, user = rng.choice(QUERIES), rng.choice(USERS)
        stream.record(_timed("search", lambda: store.search(query, Namespace(user), 5)))
        time.sleep(0.02)


def _control(stream: Stream, server, cycles: int, down_s: float, echo) -> list[dict[str, Any]]:
    """Kill and restart the server at evenly spaced points of the add stream."""
    events = []
    for c in range(cycles):
        threshold = stream.ops_target * (c + 1) // (cycles + 1)
        while stream.started_adds < threshold:
            time.sleep(0.01)
        killed_at = time.perf_counter()
        server.kill()
        time.sleep(down_s)
        event: dict[str, Any] = {"cycle": c, "killed_at_add": stream.started_adds, "killed_at": killed_at}
        try:
            server.start()
            event["restarted"] = True
        except AgentMemoryError as exc:
            event.update(restarted=False, error=str(exc))
        event["up_at"] = time.perf_counter()
        event["restart_s"] = round(event["up_at"] - killed_at - down_s, 2)
        events.append(event)
        echo(f"  cycle {c}: killed at add {event['killed_at_add']}, down {down_s} s, back after "
             f"{event['restart_s']} s more" + ("" if event["restarted"] else f" FAILED: {event.get('error')}"))
    return events


def verify(stream: Stream, store) -> dict[str, Any]:
    """Read everything back with a fresh client: acknowledged adds present, nothing stored twice."""
    stored: dict[tuple[str, str], list[str]] = {}
    for user in USERS:
        for e in store.list(Namespace(user)):
            stored.setdefault((user, e.text), []).append(e.id)
    adds = [op for op in stream.log if op.kind != "search"]
    acknowledged = [op for op in adds if op.error is None]
    lost = [(t, i) for op in acknowledged for t, i in zip(op.texts, op.ids) if i not in stored.get(t, [])]
    failed = [op for op in adds if op.error is not None]
    landed = [sum(t in stored for t in op.texts) for op in failed]
    return {
        "adds_attempted": len(adds), "episodes_acknowledged": sum(len(op.ids) for op in acknowledged),
        "adds_failed": len(failed), "lost": len(lost), "lost_examples": [t for t, _ in lost[:5]],
        "unacknowledged_stored": sum(landed),
        "partial_batches": sum(0 < n < len(op.texts) for op, n in zip(failed, landed)),
        "partial_batches_named_in_error": sum(0 < n < len(op.texts) and all(
            i in op.error for t in op.texts for i in stored.get(t, [])) for op, n in zip(failed, landed)),
        "partial_batch_examples": [{"landed": [t in stored for t in op.texts], "error": op.error[:300]}
                                   for op, n in zip(failed, landed) if 0 < n < len(op.texts)][:5],
        "stored_twice": sum(len(ids) > 1 for ids in stored.values()),
        "episodes_stored": sum(len(ids) for ids in stored.values()),
    }


def _recovery(stream: Stream, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cycle: calls that succeeded after the restart (before the next kill), and how soon the first did."""
    out = []
    for n, event in enumerate(events):
        end = events[n + 1]["killed_at"] if n + 1 < len(events) else float("inf")
        after = sorted(op.started + op.seconds for op in stream.log
                       if op.error is None and event["up_at"] <= op.started + op.seconds < end)
        out.append({"cycle": n, "restarted": event["restarted"], "restart_s": event["restart_s"],
                    "killed_at_add": event["killed_at_add"], "successes_after": len(after),
                    "first_success_after_s": round(after[0] - event["up_at"], 3) if after else None})
    return out


def run_faults(ops: int = 400, cycles: int = 3, *, down_s: float = 2.0, writers: int = 2, searchers: int = 2,
               retries: int = 3, hang_s: float = 30.0, embedder=None, echo: Callable[[str], None] | None = print,
               ) -> dict[str, Any]:
    """Kill/restart a real Chroma server ``cycles`` times during ``ops`` adds; figures and violations."""
    from agent_memory.config import StoreConfig
    from agent_memory.embedder import OnnxEmbedder
    from agent_memory.store import EpisodicStore
    from agent_memory.store.chroma import _BACKOFF_S
    from agent_memory.store.server import ChromaServer

    echo = echo or (lambda _line: None)
    embedder = embedder or OnnxEmbedder.bundled()
    stream = Stream(ops)
    with tempfile.TemporaryDirectory(prefix="am-faults-") as tmp:
        server = ChromaServer(Path(tmp) / "chroma").start()
        try:
            config = StoreConfig(collection_prefix=f"flt{uuid.uuid4().hex[:10]}", request_retries=retries,
                                 server_url=server.url)
            stores = [EpisodicStore.server(server.url, embedder, config) for _ in range(writers + searchers)]
            echo(f"[faults] {ops} adds by {writers} writers, {searchers} searchers, {cycles} SIGKILL/restart cycles "
                 f"on {server.url}")
            started = time.perf_counter()
            threads = [threading.Thread(target=_writer, args=(stream, stores[w], w)) for w in range(writers)]
            threads += [threading.Thread(target=_searcher, args=(stream, stores[writers + s], s)) for s in range(searchers)]
            for t in threads:
                t.start()
            events = _control(stream, server, cycles, down_s, echo)
            for t in threads[:writers]:
                t.join()
            stream.stop.set()
            for t in threads[writers:]:
                t.join()
            seconds = time.perf_counter() - started
            fresh = EpisodicStore.server(server.url, embedder, config)
            verified = verify(stream, fresh)
            probe = [_timed("add", lambda: [fresh.add("after the faults", Namespace(USERS[0], "agent", "s1"))]),
                     _timed("search", lambda: fresh.search("after the faults", Namespace(USERS[0]), 1))]
        finally:
            server.stop()
    return report(stream, events, verified, probe, seconds, retries, _BACKOFF_S, hang_s, cycles, down_s)


def report(stream, events, verified, probe, seconds, retries, backoff_s, hang_s, cycles, down_s) -> dict[str, Any]:
    """Figures and violations of one fault run (``verified`` from :func:`verify`)."""
    failing = [op for op in stream.log if op.error is not None]
    searches = [op for op in stream.log if op.kind == "search"]
    recovery = _recovery(stream, events)
    violations = [f"lost: acknowledged episode missing after restart: {t}" for t in verified["lost_examples"]]
    violations += [f"unclear: {op.kind} failed with {op.error[:200]}" for op in failing if not op.clear][:20]
    violations += [f"hung: {op.kind} took {op.seconds:.1f} s to fail" for op in failing if op.seconds > hang_s]
    violations += [f"not recovered: cycle {r['cycle']} (restarted={r['restarted']}) had no successful call after "
                   "the restart" for r in recovery if not r["successes_after"]]
    violations += [f"after the faults: {op.kind} failed: {op.error}" for op in probe if op.error]
    if verified["stored_twice"]:
        violations.append(f"stored twice: {verified['stored_twice']} texts")
    if verified["lost"] > len(verified["lost_examples"]):
        violations.append(f"lost: {verified['lost']} acknowledged episodes in all")
    return {
        "check": "faults", "machine": machine(), "cycles": cycles, "down_s": down_s, "seconds": round(seconds, 1),
        **{k: v for k, v in verified.items() if k != "lost_examples"},
        "searches": len(searches), "searches_failed": sum(op.error is not None for op in searches),
        "unclear_errors": sum(not op.clear for op in failing),
        "failing_call": {**percentiles([op.seconds for op in failing]), "retries": retries,
                         "backoff_total_s": round(sum(backoff_s * 2**a for a in range(retries)), 2)},
        "ok_add": percentiles([op.seconds for op in stream.log if op.kind != "search" and op.error is None]),
        "ok_search": percentiles([op.seconds for op in searches if op.error is None]),
        "error_messages": sorted({op.error.split(" after ")[0][:160] for op in failing})[:8],
        "recovery": recovery,
        "violations": capped(violations),
    }
