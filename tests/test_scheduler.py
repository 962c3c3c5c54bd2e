"""Scheduled consolidation: real APScheduler, short intervals, the tiny random backbone (via HOME/config.json)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent_memory.consolidation import ConsolidationScheduler, Consolidator, RunHistory, ScheduleConfig
from agent_memory.config import MemoryConfig
from agent_memory.errors import ConfigError
from agent_memory.memory import AgentMemory
from agent_memory.store import NewEpisode
from agent_memory.types import Namespace

FAST = {"rank": 4, "epochs": 2, "answer_tokens_per_rank": 10_000, "self_test_size": 4, "max_new_tokens": 4}
T0 = datetime(2023, 5, 9, 19, 40, tzinfo=timezone.utc)
MARIA = Namespace("maria", "companion", "s1")
BOB = Namespace("bob", "default", "default")
EXE = Path(sys.executable).parent / "agent-memory"
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # the tiny model gains nothing from more; spare the 2-core CI


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def home(tmp_path, tiny_model_dir) -> Path:
    """A memory home whose backbone is the tiny model, and whose scheduled runs train fast."""
    home = tmp_path / "home"
    (home / "schedule").mkdir(parents=True)
    (home / "config.json").write_text(json.dumps({"backbone": {"model": str(tiny_model_dir), "dtype": "float32"}}))
    (home / "schedule" / "config.json").write_text(json.dumps(FAST))
    return home


@pytest.fixture
def memory(home, embedder) -> AgentMemory:
    memory = AgentMemory.open(home, embedder=embedder)
    memory.add_many([NewEpisode(t, MARIA, timestamp=T0 + timedelta(days=i), speaker="Maria") for i, t in enumerate([
        "Big news: on Saturday I adopted a rescue dog named Biscuit.",
        "I just moved to Lisbon from Toronto last week.",
        "My sister Ana plays the cello in an orchestra.",
    ])])
    memory.add("My dog is called Rex.", BOB, timestamp=T0, speaker="Bob")
    return memory


def config(**changes) -> ScheduleConfig:
    return ScheduleConfig(**{**FAST, **changes})


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def absorbed_by(memory: AgentMemory, ns: Namespace) -> list[str | None]:
    return [e.absorbed_by for e in memory.list(ns)]


def assert_each_episode_absorbed_once(memory: AgentMemory) -> None:
    """Every episode names a module that exists and lists it; no module is unnamed by the manifest or doubled."""
    modules = memory.registry.list("maria") + memory.registry.list("bob")
    claimed = [i for m in modules for i in m.episode_ids]
    assert len(claimed) == len(set(claimed)), "an episode went into two modules"
    for ns in (MARIA, BOB):
        for e in memory.list(ns):
            assert e.absorbed_by in {m.id for m in modules} and e.id in memory.registry.get(e.absorbed_by).episode_ids
    on_disk = {p.name for p in memory.registry.root.glob("*/*/mod_*")}
    assert on_disk == {m.id for m in modules}, "module folders on disk are exactly the manifest's"


# -- configuration ------------------------------------------------------------------------------------
BAD_CONFIGS = [
    ({"cron": "61 3 * * *"}, "cron"),
    ({"cron": "0 3 * *"}, "cron"),
    ({"cron": "0 3 * * *", "every_seconds": 60}, "every_seconds"),
    ({"every_seconds": 0}, "every_seconds"),
    ({"min_pending": -1}, "min_pending"),
    ({"max_per_run": 0}, "max_per_run"),
    ({"misfire_grace_seconds": 0}, "misfire_grace_seconds"),
    ({"rank": 0}, "rank"),
    ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
    ({"jobstore_url": "not a url"}, "jobstore_url"),
    ({"nightly": True}, "nightly"),
]


@pytest.mark.parametrize("fields,field", BAD_CONFIGS, ids=[f for _, f in BAD_CONFIGS])
def test_bad_settings_raise_config_errors_naming_the_field(fields, field):
    with pytest.raises(ConfigError) as raised:
        ScheduleConfig.from_dict(fields)
    assert raised.value.field == field and raised.value.fix


def test_default_is_nightly_at_three_in_the_given_zone_and_bad_mode_is_refused(tmp_path):
    trigger = ScheduleConfig(timezone="Europe/Lisbon").trigger()
    fire = trigger.get_next_fire_time(None, datetime(2024, 7, 1, 12, 0, tzinfo=timezone.utc))
    assert fire.isoformat() == "2024-07-02T03:00:00+01:00"
    assert str(ScheduleConfig(every_seconds=90).trigger()) == "interval[0:01:30]"
    with pytest.raises(ConfigError, match="mode"):
        ConsolidationScheduler(tmp_path, mode="cron")


def test_open_reads_home_config_json_and_explicit_arguments_win(home, tiny_model_dir, embedder):
    data = json.loads((home / "config.json").read_text())
    (home / "config.json").write_text(json.dumps({**data, "home": "/elsewhere", "retrieval_k": 3}))
    opened = AgentMemory.open(home, embedder=embedder)
    assert opened.config.backbone.model == str(tiny_model_dir) and opened.config.retrieval_k == 3
    assert opened.config.home == str(home), "the file's home is overridden by the real one"
    explicit = AgentMemory.open(home, embedder=embedder, config=MemoryConfig(retrieval_k=7))
    assert explicit.config.retrieval_k == 7 and explicit.config.backbone.model == "smollm2-135m-instruct"


# -- runs on a schedule -------------------------------------------------------------------------------
def test_interval_run_consolidates_every_namespace_and_records_it(home, memory):
    with ConsolidationScheduler(home, config(every_seconds=1)) as scheduler:
        assert scheduler.running and (home / "schedule" / "jobs.sqlite").is_file()
        wait_for(lambda: len(scheduler.history(status="ok")) >= 2, 30, "two namespace runs")
    assert not scheduler.running
    runs = {r.namespace: r for r in scheduler.history(status="ok")}
    assert set(runs) == {"maria/companion", "bob/default"}
    assert runs["maria/companion"].episodes_absorbed == 3 and runs["bob/default"].episodes_absorbed == 1
    assert all(r.trigger == "schedule" and r.finished_at >= r.started_at and len(r.modules) == 1 for r in runs.values())
    assert set(absorbed_by(memory, MARIA)) == set(runs["maria/companion"].modules)
    assert absorbed_by(memory, BOB) == list(runs["bob/default"].modules)
    assert_each_episode_absorbed_once(memory)
    assert scheduler.last_pass is not None and scheduler.last_pass["status"] == "ok"


def test_restart_keeps_the_stored_job_and_its_next_run_time(home, memory):
    first = ConsolidationScheduler(home, config(every_seconds=3))
    first.start()
    due = first.job().next_run_time
    first.shutdown()
    assert memory.store.pending(Namespace("maria")), "it did not run before the restart"
    second = ConsolidationScheduler(home, config(every_seconds=3))
    assert second.job_id == first.job_id and second.job().next_run_time == due, "persisted, read without starting"
    with second:
        assert second.job().next_run_time == due, "a restart with the same settings keeps the stored run time"
        wait_for(lambda: len(second.history(status="ok")) >= 2, 30, "the stored job to run")
    first_run = second.history(status="ok")[-1]
    assert datetime.fromisoformat(first_run.started_at) >= due - timedelta(seconds=0.5), "it ran when the store said"
    assert memory.store.pending(Namespace("maria")) == [] and memory.store.pending(Namespace("bob")) == []
    changed = ConsolidationScheduler(home, config(every_seconds=3600))
    with changed:
        assert changed.job().next_run_time > datetime.now(timezone.utc) + timedelta(seconds=3500), "new settings replace it"


def test_asyncio_mode_runs_in_a_worker_thread_without_blocking_the_loop(home, memory):
    ticks = []

    async def scenario():
        async with ConsolidationScheduler(home, config(every_seconds=1), mode="asyncio") as scheduler:
            deadline = time.monotonic() + 30
            while len(scheduler.history(status="ok")) < 2 and time.monotonic() < deadline:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.05)
        return scheduler

    scheduler = asyncio.run(scenario())
    assert {r.namespace for r in scheduler.history(status="ok")} == {"maria/companion", "bob/default"}
    assert max(b - a for a, b in zip(ticks, ticks[1:])) < 1.0, "the event loop kept ticking during consolidation"
    assert_each_episode_absorbed_once(memory)


# -- one pass at a time -------------------------------------------------------------------------------
def test_lock_held_by_another_process_skips_the_pass_and_records_it(home, memory):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from agent_memory.consolidation.fanout import HomeLock\n"
         f"lock = HomeLock({str(home)!r}); assert lock.acquire(); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        scheduler = ConsolidationScheduler(home, config())
        assert scheduler.status()["lock_holder"]["pid"] == holder.pid
        summary = scheduler.run_now()
        assert summary.status == "skipped" and summary.episodes_absorbed == 0
        (row,) = scheduler.history()
        assert row.status == "skipped" and row.namespace == "*" and f"pid {holder.pid}" in row.error
        assert len(memory.store.pending(Namespace("maria"))) == 3 and memory.registry.list("maria") == []
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert scheduler.status()["lock_holder"] is None, "the kernel dropped the lock with its holder"
    assert scheduler.run_now().status == "ok"
    assert_each_episode_absorbed_once(memory)


def test_two_concurrent_passes_never_consolidate_a_namespace_twice(home, memory):
    start = threading.Barrier(2)
    summaries = []

    def one_pass():
        scheduler = ConsolidationScheduler(home, config())
        start.wait()
        summaries.append(scheduler.run_now())

    threads = [threading.Thread(target=one_pass) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(s.status for s in summaries) == ["ok", "skipped"]
    assert sum(s.episodes_absorbed for s in summaries) == 4
    assert len(memory.registry.list("maria")) == 1 and len(memory.registry.list("bob")) == 1
    assert_each_episode_absorbed_once(memory)
    assert sorted(r.status for r in RunHistory.of_home(home).list()) == ["ok", "ok", "skipped"]


def test_killed_run_leaves_no_half_module_and_the_next_run_completes(home, memory):
    slow = {**FAST, "epochs": 5000}  # the tiny model never reaches 100% teacher-forced accuracy: trains until killed
    (home / "schedule" / "config.json").write_text(json.dumps(slow))
    staging = home / "modules" / ".staging"
    proc = subprocess.Popen([str(EXE), "--home", str(home), "schedule", "run-now"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
    try:
        wait_for(lambda: staging.is_dir() and any(staging.iterdir()), 60, "training to start in the subprocess")
        time.sleep(0.3)
        assert proc.poll() is None, proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    (killed,) = RunHistory.of_home(home).list(status="running")
    assert killed.finished_at is None
    assert any(staging.iterdir()), "the kill left its staged files"
    assert memory.registry.list("maria") == [] and memory.registry.list("bob") == []
    assert len(memory.store.pending(Namespace("maria"))) + len(memory.store.pending(Namespace("bob"))) == 4
    summary = ConsolidationScheduler(home, config()).run_now()
    assert summary.status == "ok" and summary.abandoned == 1 and summary.episodes_absorbed == 4
    assert RunHistory.of_home(home).get(killed.id).status == "abandoned"
    assert not any(staging.iterdir()), "the sweep removed the half-written module"
    assert_each_episode_absorbed_once(memory)


# -- failures and thresholds --------------------------------------------------------------------------
def test_a_failing_namespace_is_recorded_and_the_others_still_run(home, memory, monkeypatch):
    real_run = Consolidator.run

    def flaky(self, namespace, **kwargs):
        if namespace.user_id == "bob":
            raise RuntimeError("boom: disk full")
        return real_run(self, namespace, **kwargs)

    monkeypatch.setattr(Consolidator, "run", flaky)
    summary = ConsolidationScheduler(home, config()).run_now()
    assert summary.status == "failed"
    rows = {r.namespace: r for r in RunHistory.of_home(home).list()}
    assert rows["bob/default"].status == "failed" and "RuntimeError: boom: disk full" in rows["bob/default"].error
    assert rows["bob/default"].modules == () and rows["bob/default"].finished_at
    assert rows["maria/companion"].status == "ok" and rows["maria/companion"].episodes_absorbed == 3
    assert absorbed_by(memory, BOB) == [None]
    monkeypatch.setattr(Consolidator, "run", real_run)
    retry = ConsolidationScheduler(home, config()).run_now()
    assert [(r.namespace, r.status) for r in retry.runs] == [("bob/default", "ok")], "maria had nothing left"
    assert [r.namespace for r in RunHistory.of_home(home).list(namespace="bob")] == ["bob/default", "bob/default"]
    assert_each_episode_absorbed_once(memory)


def test_min_pending_and_max_per_run(home, memory):
    summary = ConsolidationScheduler(home, config(min_pending=2, max_per_run=2)).run_now()
    assert [(r.namespace, r.pending, r.episodes_absorbed) for r in summary.runs] == [("maria/companion", 3, 2)]
    oldest_first = absorbed_by(memory, MARIA)
    assert oldest_first[0] and oldest_first[1] and oldest_first[2] is None
    assert absorbed_by(memory, BOB) == [None], "below min_pending: left for later"


# -- command line -------------------------------------------------------------------------------------
@pytest.fixture
def cli(home, cli_runner):
    return cli_runner(home)


def test_cli_run_now_history_and_status(cli, home, memory):
    code, out, _ = cli("schedule", "status", "--json")
    assert code == 0 and json.loads(out)["scheduled"] is False and json.loads(out)["lock_holder"] is None
    code, out, err = cli("schedule", "run-now", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["status"] == "ok" and summary["episodes_absorbed"] == 4
    code, out, _ = cli("schedule", "history", "--json")
    runs = json.loads(out)
    assert {"namespace", "started_at", "finished_at", "episodes_absorbed", "modules", "error"} <= set(runs[0])
    assert sorted((r["namespace"], r["episodes_absorbed"], len(r["modules"])) for r in runs) == [
        ("bob/default", 1, 1), ("maria/companion", 3, 1)]
    assert set(absorbed_by(memory, MARIA)) == {r["modules"][0] for r in runs if r["namespace"] == "maria/companion"}
    code, out, _ = cli("schedule", "history", "--namespace", "maria", "--json")
    assert [r["namespace"] for r in json.loads(out)] == ["maria/companion"]
    with ConsolidationScheduler(home, config(cron="30 4 * * *", timezone="UTC")):
        pass
    code, out, _ = cli("schedule", "status", "--json")
    status = json.loads(out)
    assert status["scheduled"] and "hour='4', minute='30'" in status["trigger"]
    assert datetime.fromisoformat(status["next_run_time"]).strftime("%H:%M") == "04:30"
    assert status["jobstore"].endswith("schedule/jobs.sqlite") and status["last_run"]["status"] == "ok"
    code, out, _ = cli("schedule", "status")
    assert code == 0 and "next_run_time: " in out and "lock_holder: None" in out


BAD_CLI = [
    (["schedule", "start", "--cron", "61 * * * *"], "error: cron:"),
    (["schedule", "start", "--cron", "0 3 * * *", "--every", "5"], "error: every_seconds:"),
    (["schedule", "start", "--every", "0"], "error: every_seconds:"),
    (["schedule", "start", "--timezone", "Nowhere/Atlantis"], "error: timezone:"),
    (["schedule", "run-now", "--max-per-run", "0"], "error: max_per_run:"),
    (["schedule", "history", "--status", "great"], "error: status:"),
]


@pytest.mark.parametrize("args,expected", BAD_CLI, ids=[" ".join(a[1:3]) for a, _ in BAD_CLI])
def test_cli_bad_input_exits_2_with_one_error_line(cli, home, args, expected):
    code, out, err = cli(*args)
    assert code == 2 and err.strip().startswith(expected) and len(err.strip().splitlines()) == 1
    assert not (home / "schedule" / "jobs.sqlite").exists(), "nothing was scheduled"


def test_cli_start_runs_in_the_foreground_and_stops_cleanly_on_sigterm(home, memory):
    proc = subprocess.Popen([str(EXE), "--home", str(home), "schedule", "start", "--every", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
    try:
        history = RunHistory.of_home(home)
        wait_for(lambda: len(history.list(status="ok")) >= 2, 60, "the foreground scheduler's first pass")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "every 1 s" in out and " ok: " in out and out.rstrip().endswith("scheduler stopped")
    assert "SIGTERM: stopping" in err and "Traceback" not in err
    assert history.list(status="running") == [], "nothing was left half-done"
    assert {r.namespace for r in history.list(status="ok")} == {"maria/companion", "bob/default"}
