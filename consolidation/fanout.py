"""One consolidation pass over a memory home: every (user, agent) with enough pending episodes.

A pass first takes the home lock (``HOME/schedule/consolidate.lock``, ``fcntl.flock``,
non-blocking). Whoever holds it is the only process consolidating that home, so two
schedulers, a scheduler and ``schedule run-now``, or two threads never train the same
namespace at once, and the registry sweep at the start of a consolidation cannot
remove another run's staged module. A pass that finds the lock taken records one
``skipped`` row and returns at once; it never waits. The kernel drops the lock when
its holder dies, so a killed run never blocks the next one.

Each namespace runs in its own try-block: a failure is recorded and the pass goes on
with the next namespace on a freshly opened memory (a failed training may leave the
backbone half-wrapped). Crash safety of a single consolidation (staging, atomic
commit, reconcile) is the Consolidator's.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

from agent_memory.consolidation.consolidator import ConsolidationConfig, Consolidator
from agent_memory.consolidation.history import ALL_NAMESPACES, RunHistory, RunRecord, schedule_dir, utc_now
from agent_memory.types import Namespace

log = logging.getLogger("agent_memory.consolidation.scheduler")


class HomeLock:
    """Exclusive, non-blocking, cross-process lock on consolidating one memory home.

    The lock file's content names the holder (pid, host, since) for ``schedule status``;
    the lock itself is the ``flock``, which the kernel releases when the holder exits.
    """

    def __init__(self, home: str | Path) -> None:
        self.path = schedule_dir(home) / "consolidate.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> bool:
        """Take the lock if it is free; ``False`` (at once) when another process or thread holds it."""
        if self._file is not None:
            raise RuntimeError(f"{self.path} is already held by this HomeLock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # "a+": opening must not wipe the holder's note
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now()}))
        handle.flush()
        self._file = handle
        return True

    def release(self) -> None:
        if self._file is None:
            return
        handle, self._file = self._file, None
        try:
            handle.seek(0)
            handle.truncate()
            handle.flush()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock (from the note it left), or ``None``; a note left by a dead local process is ignored."""
        try:
            note = json.loads(self.path.read_text(encoding="utf-8") or "null")
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(note, dict):
            return None
        if note.get("host") == socket.gethostname() and not _alive(note.get("pid")):
            return None
        return note

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class PassSummary:
    """What one pass did: its status and one history record per namespace it touched."""

    pass_id: str
    trigger: str
    status: str
    """``ok`` (every namespace succeeded, or none was due), ``failed`` (at least one failed),
    ``skipped`` (another process held the home lock) or ``stopped`` (shutdown asked it to end early)."""
    started_at: str
    finished_at: str = ""
    runs: list[RunRecord] = field(default_factory=list)
    abandoned: int = 0
    """Stale ``running`` rows of killed runs this pass marked ``abandoned``."""

    @property
    def episodes_absorbed(self) -> int:
        return sum(r.episodes_absorbed for r in self.runs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pass_id": self.pass_id, "trigger": self.trigger, "status": self.status,
            "started_at": self.started_at, "finished_at": self.finished_at,
            "episodes_absorbed": self.episodes_absorbed, "abandoned": self.abandoned,
            "runs": [r.to_dict() for r in self.runs],
        }


def due_namespaces(store, min_pending: int) -> list[tuple[Namespace, int]]:
    """Every (user, agent) scope with at least ``min_pending`` pending episodes, with its pending count."""
    scopes = sorted({(n.user_id, n.agent_id) for n in store.namespaces()})
    due = []
    for user, agent in scopes:
        scope = Namespace(user, agent)
        count = len(store.pending(scope))
        if count >= min_pending:
            due.append((scope, count))
    return due


def run_pass(
    home: str | Path,
    consolidation: ConsolidationConfig,
    open_memory: Callable[[], Any],
    *,
    min_pending: int = 1,
    max_per_run: int | None = None,
    trigger: str = "run-now",
    should_stop: Callable[[], bool] = lambda: False,
) -> PassSummary:
    """Consolidate every due namespace of ``home`` under the home lock, recording each in the run history."""
    history = RunHistory.of_home(home)
    summary = PassSummary(pass_id=uuid.uuid4().hex[:12], trigger=trigger, status="ok", started_at=utc_now())
    lock = HomeLock(home)
    if not lock.acquire():
        holder = lock.holder() or {}
        who = f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}" if holder else "another process"
        error = f"home lock {lock.path} is held by {who}; this pass was skipped (the holder is consolidating this home)"
        run_id = history.record(summary.pass_id, ALL_NAMESPACES, trigger, "skipped", error)
        log.warning(error)
        return _done(summary, "skipped", [history.get(run_id)])
    try:
        summary.abandoned = history.abandon_running()
        return _consolidate_due(home, history, summary, consolidation, open_memory, min_pending, max_per_run, should_stop)
    finally:
        lock.release()


def _consolidate_due(home, history, summary, consolidation, open_memory, min_pending, max_per_run, should_stop):
    try:
        memory = open_memory()
        due = due_namespaces(memory.store, min_pending)
    except Exception as exc:  # the home cannot be opened: record it, the scheduler tries again next time
        log.exception("cannot open memory home %s", home)
        run_id = history.record(summary.pass_id, ALL_NAMESPACES, summary.trigger, "failed", _describe(exc))
        return _done(summary, "failed", [history.get(run_id)])
    status, runs = "ok", []
    for scope, pending in due:
        if should_stop():
            status = "stopped"
            break
        run_id = history.start(summary.pass_id, str(scope), summary.trigger, pending)
        try:
            result = Consolidator(memory.store, memory.backbone, memory.registry, consolidation,
                                  memory.synthesizer).run(scope, limit=max_per_run)
        except Exception as exc:
            log.exception("consolidating %s failed", scope)
            history.finish(run_id, "failed", error=_describe(exc))
            status = "failed"
            memory = _reopen(open_memory, memory)
        else:
            recalls = [m.recall for m in result.modules]
            history.finish(
                run_id, "ok", episodes_absorbed=result.episodes_absorbed, reconciled=result.reconciled,
                modules=[m.id for m in result.modules], recall=round(sum(recalls) / len(recalls), 4) if recalls else None,
            )
        runs.append(history.get(run_id))
    return _done(summary, status, runs)


def _reopen(open_memory, memory):
    """After a failure, continue on fresh objects: a training that raised may leave LoRA layers on the backbone."""
    try:
        return open_memory()
    except Exception:
        log.exception("reopening the memory home failed; continuing with the old one")
        return memory


def _done(summary: PassSummary, status: str, runs: list[RunRecord | None]) -> PassSummary:
    summary.status = status
    summary.runs = [r for r in runs if r is not None]
    summary.finished_at = utc_now()
    return summary


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= 2000 else text[:1997] + "..."
