"""Run history: one row per namespace consolidation a scheduled (or run-now) pass attempted.

Stored in SQLite at ``HOME/schedule/history.sqlite`` with the standard library's
``sqlite3``, so any process on the machine can read it while a scheduler writes.
A row is inserted as ``running`` before the namespace is touched and finished as
``ok`` or ``failed``; a process killed in between leaves ``running``, which the
next pass (holding the home lock, so no live run can own it) marks ``abandoned``.
A pass that could not take the home lock writes one ``skipped`` row (namespace ``*``).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from contextlib import closing
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from agent_memory.errors import ConfigError

STATUSES = ("running", "ok", "failed", "skipped", "abandoned")
ALL_NAMESPACES = "*"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pass_id TEXT NOT NULL,
    namespace TEXT NOT NULL,
    status TEXT NOT NULL,
    trigger TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    pending INTEGER NOT NULL DEFAULT 0,
    episodes_absorbed INTEGER NOT NULL DEFAULT 0,
    reconciled INTEGER NOT NULL DEFAULT 0,
    modules TEXT NOT NULL DEFAULT '[]',
    recall REAL,
    error TEXT,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_namespace ON runs (namespace, id);
"""


def schedule_dir(home: str | Path) -> Path:
    """Where the scheduler keeps its files inside a memory home."""
    return Path(home) / "schedule"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class RunRecord:
    """One namespace consolidation attempt, as the history table holds it."""

    id: int
    pass_id: str
    namespace: str
    status: str
    trigger: str
    started_at: str
    finished_at: str | None
    pending: int
    episodes_absorbed: int
    reconciled: int
    modules: tuple[str, ...]
    recall: float | None
    error: str | None
    pid: int
    host: str

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["modules"] = list(self.modules)
        return data


class RunHistory:
    """The run-history table of one memory home (or any SQLite file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def of_home(cls, home: str | Path) -> "RunHistory":
        return cls(schedule_dir(home) / "history.sqlite")

    # -- writing ----------------------------------------------------------------------------------
    def start(self, pass_id: str, namespace: str, trigger: str, pending: int = 0) -> int:
        """Insert a ``running`` row before the namespace is touched; returns its id."""
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO runs (pass_id, namespace, status, trigger, started_at, pending, pid, host)"
                " VALUES (?, ?, 'running', ?, ?, ?, ?, ?)",
                (pass_id, namespace, trigger, utc_now(), pending, os.getpid(), socket.gethostname()),
            )
            return int(cursor.lastrowid)

    def finish(
        self,
        run_id: int,
        status: str,
        *,
        episodes_absorbed: int = 0,
        reconciled: int = 0,
        modules: Sequence[str] = (),
        recall: float | None = None,
        error: str | None = None,
    ) -> None:
        """Close a row as ``ok``, ``failed`` or ``skipped``."""
        if status not in STATUSES or status == "running":
            raise ConfigError("status", f"{status!r} does not finish a run", "use ok, failed, skipped or abandoned")
        with self._connect() as db:
            db.execute(
                "UPDATE runs SET status=?, finished_at=?, episodes_absorbed=?, reconciled=?, modules=?, recall=?, error=?"
                " WHERE id=?",
                (status, utc_now(), episodes_absorbed, reconciled, json.dumps(list(modules)), recall, error, run_id),
            )

    def record(self, pass_id: str, namespace: str, trigger: str, status: str, error: str | None = None) -> int:
        """A row that starts and finishes at once (a skipped pass, a pass that failed before any namespace)."""
        run_id = self.start(pass_id, namespace, trigger)
        self.finish(run_id, status, error=error)
        return run_id

    def abandon_running(self) -> int:
        """Mark every ``running`` row ``abandoned``. Call it only while holding the home lock."""
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE runs SET status='abandoned', finished_at=?,"
                " error=COALESCE(error, 'the process running it ended before it finished') WHERE status='running'",
                (utc_now(),),
            )
            return cursor.rowcount

    # -- reading ----------------------------------------------------------------------------------
    def list(self, limit: int = 50, namespace: str | None = None, status: str | None = None) -> list[RunRecord]:
        """Newest first; optionally one namespace (``user/agent``, or a user: all its agents) or one status."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise ConfigError("limit", f"{limit!r} is not a positive integer", "pass limit >= 1")
        if status is not None and status not in STATUSES:
            raise ConfigError("status", f"{status!r} is not a run status", f"use one of {', '.join(STATUSES)}")
        if not self.path.is_file():
            return []
        where, params = [], []
        if namespace:
            where.append("(namespace = ? OR substr(namespace, 1, ?) = ?)")
            params += [namespace, len(namespace) + 1, namespace + "/"]
        if status:
            where.append("status = ?")
            params.append(status)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
        with self._connect() as db:
            rows = db.execute(sql, (*params, limit)).fetchall()
        return [_to_record(r) for r in rows]

    def get(self, run_id: int) -> RunRecord | None:
        if not self.path.is_file():
            return None
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return _to_record(row) if row else None

    # -- internals --------------------------------------------------------------------------------
    def _connect(self) -> "_Transaction":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        db.executescript(_SCHEMA)
        return _Transaction(db)


class _Transaction:
    """``with`` block: commit on success, roll back on error, always close."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        with closing(self.db):
            if exc_type is None:
                self.db.commit()
            else:
                self.db.rollback()


def _to_record(row: sqlite3.Row) -> RunRecord:
    data = dict(row)
    data["modules"] = tuple(json.loads(data["modules"] or "[]"))
    return RunRecord(**data)
