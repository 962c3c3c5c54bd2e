"""Scheduled consolidation on APScheduler 3: nightly (cron) or every N seconds, persisted, one pass at a time.

The job lives in a SQLAlchemy job store (``HOME/schedule/jobs.sqlite`` by default, any
SQLAlchemy URL accepted) as a textual reference to :func:`run_scheduled` with plain
arguments (the home path and the config as a dict), so it survives restarts: a new
scheduler with the same settings keeps the stored job and its next run time; changed
settings replace it. ``coalesce`` folds a backlog of missed runs into one,
``misfire_grace_time`` drops runs that are too late, ``max_instances=1`` prevents overlap
inside a process and the home lock (see :mod:`.fanout`) across processes.

Three ways to run it: ``mode="blocking"`` (the ``schedule start`` command, in the
foreground), ``"background"`` (a thread inside an agent process; a context manager) and
``"asyncio"`` (on the running event loop; ``async with``). Consolidation itself always
runs in a worker thread, on its own backbone: it never touches the agent's model.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from agent_memory.config import check_fields, default_home, read_json, require_positive_int
from agent_memory.errors import ConfigError

from agent_memory.consolidation.consolidator import ConsolidationConfig
from agent_memory.consolidation.fanout import HomeLock, PassSummary, run_pass
from agent_memory.consolidation.history import ALL_NAMESPACES, RunHistory, RunRecord, schedule_dir
from agent_memory.consolidation.trainer import LoraSettings

log = logging.getLogger("agent_memory.consolidation.scheduler")

JOB_FUNC = "agent_memory.consolidation.scheduler:run_scheduled"
DEFAULT_CRON = "0 3 * * *"
MODES = ("background", "blocking", "asyncio")


@dataclass(frozen=True)
class ScheduleConfig:
    """When scheduled consolidation runs, what it takes on, and how it trains."""

    cron: str | None = None
    """Five-field crontab expression (``minute hour day month weekday``); neither this nor every_seconds: nightly ``0 3 * * *``."""
    every_seconds: int | None = None
    """Run every N seconds instead of on a cron expression (give one of the two, not both)."""
    timezone: str | None = None
    """IANA zone the cron expression is read in, e.g. ``Europe/Lisbon``; ``None`` is the machine's local zone."""
    min_pending: int = 1
    """A (user, agent) namespace is consolidated only when it has at least this many pending episodes."""
    max_per_run: int | None = None
    """At most this many (oldest) pending episodes per namespace per run; ``None`` takes them all."""
    misfire_grace_seconds: int = 6 * 3600
    """A run that could not start on time (machine asleep, scheduler down) still runs if at most this late."""
    jobstore_url: str | None = None
    """SQLAlchemy URL of the job store; ``None`` is ``sqlite:///HOME/schedule/jobs.sqlite``."""
    server_url: str | None = None
    """Chroma server the runs open (``http://host:port``); ``None`` uses HOME/config.json or the embedded store."""
    rank: int = 16
    """LoRA rank of the modules scheduled runs train."""
    alpha: int | None = None
    """LoRA alpha; ``None`` is 2 x rank (DESIGN.md: alpha = 2r with lr 2e-3)."""
    epochs: int = 30
    """Most passes over the synthesized QA (training stops earlier once it reproduces every answer)."""
    answer_tokens_per_rank: int = 64
    """Module capacity budget (see ConsolidationConfig); more pending load opens more modules."""
    self_test_size: int = 24
    """Own training questions each new module is asked in its self-test."""
    max_new_tokens: int = 64
    """Longest self-test answer."""

    def __post_init__(self) -> None:
        require_positive_int(self, "min_pending", "misfire_grace_seconds", "rank", "epochs",
                             "answer_tokens_per_rank", "self_test_size", "max_new_tokens")
        for name in ("every_seconds", "max_per_run", "alpha"):
            if getattr(self, name) is not None:
                require_positive_int(self, name)
        if self.cron is not None and self.every_seconds is not None:
            raise ConfigError("every_seconds", f"{self.every_seconds!r} is given together with cron={self.cron!r}",
                              "give either a cron expression or an interval in seconds, not both")
        _check_timezone(self.timezone)
        if self.cron is not None and (not isinstance(self.cron, str) or not self.cron.strip()):
            raise ConfigError("cron", f"{self.cron!r} is not a cron expression", "write five fields, e.g. '0 3 * * *'")
        self.trigger()  # a bad cron expression fails here, naming the field
        _check_url(self.jobstore_url)
        if self.server_url is not None and not str(self.server_url).startswith(("http://", "https://")):
            raise ConfigError("server_url", f"{self.server_url!r} is not a URL", "write it as http://127.0.0.1:8000")

    def trigger(self):
        """The APScheduler trigger: cron (default nightly) or interval."""
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        if self.every_seconds is not None:
            return IntervalTrigger(seconds=self.every_seconds, timezone=self.timezone)
        try:
            return CronTrigger.from_crontab(self.cron or DEFAULT_CRON, timezone=self.timezone)
        except ValueError as exc:
            raise ConfigError("cron", f"{self.cron!r} is not a valid crontab expression ({exc})",
                              "write five fields 'minute hour day month weekday', e.g. '0 3 * * *'") from None

    def describe_trigger(self) -> str:
        if self.every_seconds is not None:
            return f"every {self.every_seconds} s"
        return f"cron '{self.cron or DEFAULT_CRON}' ({self.timezone or 'local time'})"

    def consolidation_config(self) -> ConsolidationConfig:
        lora = LoraSettings(rank=self.rank, alpha=self.alpha or 2 * self.rank, max_epochs=self.epochs)
        return ConsolidationConfig(lora=lora, answer_tokens_per_rank=self.answer_tokens_per_rank,
                                   self_test_size=self.self_test_size, max_new_tokens=self.max_new_tokens)

    def jobstore(self, home: str | Path) -> str:
        """The job store URL for ``home``."""
        return self.jobstore_url or f"sqlite:///{Path(home).resolve() / 'schedule' / 'jobs.sqlite'}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ScheduleConfig":
        return cls(**check_fields(cls, data))

    @classmethod
    def from_file(cls, path: str | Path) -> "ScheduleConfig":
        return cls.from_dict(read_json(path, "schedule config"))

    @classmethod
    def for_home(cls, home: str | Path, **overrides: Any) -> "ScheduleConfig":
        """``HOME/schedule/config.json`` if present (else the defaults), with ``overrides`` on top.

        Overriding ``cron`` clears the file's ``every_seconds`` and vice versa.
        """
        path = schedule_dir(home) / "config.json"
        base = cls.from_file(path).to_dict() if path.is_file() else {}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "cron" in overrides:
            base["every_seconds"] = None
        if "every_seconds" in overrides:
            base["cron"] = None
        return cls.from_dict({**base, **overrides})


def _check_timezone(name: Any) -> None:
    if name is None:
        return
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        if not isinstance(name, str):
            raise ValueError
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("timezone", f"{name!r} is not a known time zone", "use an IANA name like UTC or Europe/Lisbon") from None


def _check_url(url: Any) -> None:
    if url is None:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except (ArgumentError, TypeError, ValueError):
        raise ConfigError("jobstore_url", f"{url!r} is not a SQLAlchemy URL", "write e.g. sqlite:////path/jobs.sqlite") from None


def job_id_for(home: str | Path) -> str:
    """One job per home, so homes can share a job store."""
    return "consolidate-" + hashlib.sha1(str(Path(home).resolve()).encode()).hexdigest()[:12]


# -- in-process state shared by the job function and the scheduler objects of one home ------------------
class _HomeActivity:
    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._busy = threading.Condition()
        self._running = 0

    def __enter__(self) -> None:
        with self._busy:
            self._running += 1

    def __exit__(self, *exc: Any) -> None:
        with self._busy:
            self._running -= 1
            self._busy.notify_all()

    def wait_idle(self, timeout: float | None) -> bool:
        with self._busy:
            return self._busy.wait_for(lambda: self._running == 0, timeout)


_ACTIVITY: dict[str, _HomeActivity] = {}
_ACTIVITY_LOCK = threading.Lock()


def _activity(home: str | Path) -> _HomeActivity:
    key = str(Path(home).resolve())
    with _ACTIVITY_LOCK:
        return _ACTIVITY.setdefault(key, _HomeActivity())


def run_scheduled(home: str, config: dict[str, Any]) -> dict[str, Any]:
    """The job the job store holds (by textual reference): one pass over ``home``. Returns the summary as a dict."""
    settings = ScheduleConfig.from_dict(config)
    activity = _activity(home)
    if activity.stopping.is_set():  # fired while shutting down: start nothing
        return PassSummary(pass_id="", trigger="schedule", status="stopped", started_at="").to_dict()
    with activity:
        summary = _pass(home, settings, "schedule", activity.stopping.is_set)
    return summary.to_dict()


def _pass(home: str, settings: ScheduleConfig, trigger: str, should_stop: Callable[[], bool]) -> PassSummary:
    def open_memory():
        from agent_memory.memory import AgentMemory

        return AgentMemory.open(home, server_url=settings.server_url)

    return run_pass(home, settings.consolidation_config(), open_memory, min_pending=settings.min_pending,
                    max_per_run=settings.max_per_run, trigger=trigger, should_stop=should_stop)


class ConsolidationScheduler:
    """Runs :func:`run_scheduled` for one memory home on a cron or interval trigger."""

    def __init__(self, home: str | Path | None = None, config: ScheduleConfig | None = None, *,
                 mode: str = "background", on_pass: Callable[[dict[str, Any]], None] | None = None) -> None:
        if mode not in MODES:
            raise ConfigError("mode", f"{mode!r} is not a scheduler mode", f"use one of {', '.join(MODES)}")
        self.home = str(Path(home or default_home()).resolve())
        self.config = config or ScheduleConfig()
        self.mode = mode
        self.on_pass = on_pass  # called (in the worker thread) with each finished scheduled pass's summary dict
        self.job_id = job_id_for(self.home)
        self.last_pass: dict[str, Any] | None = None
        self._scheduler = None
        self._start_error: BaseException | None = None

    @classmethod
    def from_home(cls, home: str | Path | None = None, *, mode: str = "background", **overrides: Any) -> "ConsolidationScheduler":
        """Settings from ``HOME/schedule/config.json`` (if any) with ``overrides`` (ScheduleConfig fields) on top."""
        home = home or default_home()
        return cls(home, ScheduleConfig.for_home(home, **overrides), mode=mode)

    @property
    def jobstore_url(self) -> str:
        return self.config.jobstore(self.home)

    @property
    def jobstore_label(self) -> str:
        """The job store URL with any password hidden."""
        from sqlalchemy.engine import make_url

        return make_url(self.jobstore_url).render_as_string(hide_password=True)

    @property
    def running(self) -> bool:
        return self._scheduler is not None and self._scheduler.running

    @property
    def stopping(self) -> bool:
        """True once shutdown or stop was asked for (until the next start)."""
        return _activity(self.home).stopping.is_set()

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start scheduling (``mode="blocking"``: runs until :meth:`stop`). Marks runs killed earlier ``abandoned``."""
        if self.running:
            raise ConfigError("scheduler", "is already running", "call shutdown() before starting it again")
        schedule_dir(self.home).mkdir(parents=True, exist_ok=True)
        _activity(self.home).stopping.clear()
        with HomeLock(self.home) as free:
            if free:  # nobody is consolidating, so every 'running' row is a leftover of a killed process
                RunHistory.of_home(self.home).abandon_running()
        self._start_error = None
        self._scheduler = self._build()
        self._scheduler.start()
        if self._start_error is not None:
            raise self._start_error

    def shutdown(self, wait: bool = True) -> None:
        """Stop scheduling. A pass in progress ends after its current namespace; ``wait`` waits for that."""
        _activity(self.home).stopping.set()
        if self.running:
            self._scheduler.shutdown(wait=wait and self.mode != "asyncio")
        if wait and self.mode != "asyncio":
            self.wait_idle()

    def stop(self) -> None:
        """Ask a blocking scheduler to stop; safe from a signal handler. :meth:`start` returns soon after."""
        _activity(self.home).stopping.set()
        if self.running:  # from another thread: the handler may have interrupted the scheduler's own loop
            threading.Thread(target=self._shutdown_quietly, daemon=True).start()

    def _shutdown_quietly(self) -> None:
        from apscheduler.schedulers import SchedulerNotRunningError

        try:
            self._scheduler.shutdown(wait=False)
        except SchedulerNotRunningError:
            pass

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no scheduled pass of this home runs in this process; ``False`` on timeout."""
        return _activity(self.home).wait_idle(timeout)

    def __enter__(self) -> "ConsolidationScheduler":
        if self.mode == "blocking":
            raise ConfigError("mode", "'blocking' cannot run inside a with-block", "use mode='background'")
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    async def __aenter__(self) -> "ConsolidationScheduler":
        if self.mode != "asyncio":
            raise ConfigError("mode", f"{self.mode!r} does not run on an event loop", "use mode='asyncio' with async with")
        self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop an asyncio scheduler and wait (without blocking the loop) for a pass in progress."""
        self.shutdown(wait=False)
        await asyncio.to_thread(self.wait_idle)

    # -- one pass now, history, status ------------------------------------------------------------
    def run_now(self) -> PassSummary:
        """One pass immediately, in the calling thread (skipped if another process holds the home lock)."""
        return _pass(self.home, self.config, "run-now", lambda: False)

    def history(self, limit: int = 50, namespace: str | None = None, status: str | None = None) -> list[RunRecord]:
        """Recorded runs, newest first (``namespace``: ``user/agent``, or a user for all its agents)."""
        return RunHistory.of_home(self.home).list(limit, namespace, status)

    def job(self):
        """The stored APScheduler job of this home, or ``None`` (reads the job store; starts nothing)."""
        if self.running:
            return self._scheduler.get_job(self.job_id)
        if self.config.jobstore_url is None and not (schedule_dir(self.home) / "jobs.sqlite").is_file():
            return None
        # Read the store directly: a (paused) scheduler would process due jobs once when it shuts down.
        store = self._jobstores()["default"]
        store.start(None, "default")
        try:
            return store.lookup_job(self.job_id)
        finally:
            store.shutdown()

    def status(self) -> dict[str, Any]:
        """Trigger, next run time, job store, lock holder and the latest recorded run."""
        job = self.job()
        latest = self.history(limit=1)
        return {
            "home": self.home,
            "job_id": self.job_id,
            "jobstore": self.jobstore_label,
            "scheduled": job is not None,
            "trigger": str(job.trigger) if job else None,
            "settings": job.kwargs.get("config") if job else None,
            "next_run_time": job.next_run_time.isoformat() if job and job.next_run_time else None,
            "running_here": self.running,
            "lock_holder": HomeLock(self.home).holder(),
            "last_run": latest[0].to_dict() if latest else None,
        }

    # -- internals --------------------------------------------------------------------------------
    def _jobstores(self) -> dict[str, Any]:
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

        return {"default": SQLAlchemyJobStore(url=self.jobstore_url)}

    def _build(self):
        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, EVENT_SCHEDULER_STARTED
        from apscheduler.executors.pool import ThreadPoolExecutor

        if self.mode == "blocking":
            from apscheduler.schedulers.blocking import BlockingScheduler as Scheduler
        elif self.mode == "asyncio":
            from apscheduler.schedulers.asyncio import AsyncIOScheduler as Scheduler
        else:
            from apscheduler.schedulers.background import BackgroundScheduler as Scheduler
        scheduler = Scheduler(
            jobstores=self._jobstores(),
            executors={"default": ThreadPoolExecutor(1)},  # consolidation is CPU-bound: never two at once
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": self.config.misfire_grace_seconds},
            timezone=self.config.timezone,
        )
        scheduler.add_listener(self._on_started, EVENT_SCHEDULER_STARTED)
        scheduler.add_listener(self._on_job_event, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
        return scheduler

    def _on_started(self, event: Any) -> None:
        """Put our job in the store, keeping a stored one (and its next run time) when nothing changed."""
        try:
            kwargs = {"home": self.home, "config": self.config.to_dict()}
            job = self._scheduler.get_job(self.job_id)
            if job is not None and job.func_ref == JOB_FUNC and job.kwargs == kwargs:
                log.info("kept the stored job %s (%s), next run %s", self.job_id, job.trigger, job.next_run_time)
                return
            job = self._scheduler.add_job(
                JOB_FUNC, self.config.trigger(), id=self.job_id, name=f"consolidate {self.home}", kwargs=kwargs,
                replace_existing=True, coalesce=True, max_instances=1,
                misfire_grace_time=self.config.misfire_grace_seconds,
            )
            log.info("scheduled job %s (%s)", self.job_id, job.trigger)
        except Exception as exc:  # APScheduler swallows listener errors: hand it to start()
            self._start_error = exc
            self._scheduler.shutdown(wait=False)

    def _on_job_event(self, event: Any) -> None:
        from apscheduler.events import EVENT_JOB_MISSED

        if event.job_id != self.job_id:
            return
        if event.code == EVENT_JOB_MISSED:
            note = (f"the run due at {event.scheduled_run_time.isoformat()} was missed by more than "
                    f"misfire_grace_seconds={self.config.misfire_grace_seconds}")
            RunHistory.of_home(self.home).record("missed", ALL_NAMESPACES, "schedule", "skipped", note)
            log.warning(note)
            return
        if event.exception is not None:
            note = f"the scheduled pass raised {type(event.exception).__name__}: {event.exception}"
            RunHistory.of_home(self.home).record("error", ALL_NAMESPACES, "schedule", "failed", note)
            log.error(note)
            return
        self.last_pass = event.retval
        if self.on_pass is not None:
            self.on_pass(event.retval)
