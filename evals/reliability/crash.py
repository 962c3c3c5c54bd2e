"""Crash safety: SIGKILL a consolidation at seeded random moments, then check that nothing was lost or half-made.

One trial: a fresh home (embedded Chroma) holding pending episodes of two agents; a child
process consolidates them (several modules, so the kill can land in training, self-test,
staging, commit, marking, or between modules) and is killed with SIGKILL after a delay drawn
uniformly from the duration of an uninterrupted consolidation (timed from after the child's imports and
model load to the return of ``consolidate``). Then, before anything repairs the home:

* every episode is still there, exactly once, with its text;
* every module the manifest names has its adapter files, names only existing episodes, and
  every episode marked absorbed points at a module that lists it (nothing absorbed twice);
* the next consolidation completes, after which every episode is absorbed and no staged or
  unnamed module folder is left.

The backbone is a tiny random Llama by default: the code paths, not the model's knowledge, are
under test (``--backbone`` takes a real one).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

USER = "crashuser"
AGENTS = ("alpha", "beta")
CHILD_CONFIG = {"rank": 4, "epochs": 12, "answer_tokens_per_rank": 40}


def _consolidation_config():
    from agent_memory.consolidation import ConsolidationConfig, LoraSettings

    lora = LoraSettings(rank=CHILD_CONFIG["rank"], alpha=2 * CHILD_CONFIG["rank"], max_epochs=CHILD_CONFIG["epochs"],
                        stop_at_accuracy=1.0)
    return ConsolidationConfig(lora=lora, answer_tokens_per_rank=CHILD_CONFIG["answer_tokens_per_rank"],
                               self_test_size=4, max_new_tokens=4, recall_floor=0.0)


def seed_home(home: Path, backbone_model: str, episodes: int, seed: int) -> list[str]:
    """A home with ``episodes`` pending episodes over two agents; returns their ids."""
    from agent_memory import AgentMemory, Namespace, NewEpisode

    home.mkdir(parents=True, exist_ok=True)
    (home / "config.json").write_text(json.dumps({"backbone": {"model": backbone_model, "dtype": "float32"}}))
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    items = [
        NewEpisode(f"maria said the {rng.choice(['dog', 'city', 'name'])} is {rng.choice(['lisbon', 'biscuit'])} "
                   f"(note {i})", Namespace(USER, AGENTS[i % 2], f"s{i % 3}"), timestamp=start + timedelta(hours=i))
        for i in range(episodes)
    ]
    return [e.id for e in AgentMemory.open(home).add_many(items)]


def child(home: str) -> None:
    """The process that gets killed: one consolidation of the whole user."""
    from agent_memory import AgentMemory

    memory = AgentMemory.open(home)
    memory.backbone  # loaded before the signal below: kills land in consolidation, not in imports
    print("start", flush=True)
    result = memory.consolidate(USER, _consolidation_config())
    print(json.dumps({"modules": len(result.modules), "absorbed": result.episodes_absorbed}), flush=True)


def _spawn(home: Path) -> subprocess.Popen:
    code = f"from agent_memory.evals.reliability.crash import child; child({str(home)!r})"
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def check_home(home: Path, expected_ids: list[str]) -> list[str]:
    """Invariants that must hold whatever moment the crash hit. Returns the violations found."""
    from agent_memory import AgentMemory

    memory = AgentMemory.open(home)
    episodes = memory.list(USER)
    ids = [e.id for e in episodes]
    problems = []
    if sorted(ids) != sorted(expected_ids):
        problems.append(f"episodes lost or added: {len(set(expected_ids) - set(ids))} lost, {len(set(ids) - set(expected_ids))} new")
    if len(ids) != len(set(ids)):
        problems.append("duplicate episodes")
    modules = {m.id: m for m in memory.registry.list(USER)}
    for m in modules.values():
        folder = memory.registry.path(m)
        if not (folder / "adapter_config.json").is_file() or not (folder / "adapter_model.safetensors").is_file():
            problems.append(f"half module visible: {m.id}")
        if set(m.episode_ids) - set(ids):
            problems.append(f"module {m.id} names missing episodes")
    owners: dict[str, list[str]] = {}
    for m in modules.values():
        for i in m.episode_ids:
            owners.setdefault(i, []).append(m.id)
    for e in episodes:
        if e.absorbed_by and e.absorbed_by not in modules:
            problems.append(f"episode {e.id} absorbed by missing module {e.absorbed_by}")
        elif e.absorbed_by and e.id not in modules[e.absorbed_by].episode_ids:
            problems.append(f"episode {e.id} absorbed by a module that does not list it")
    if any(len(v) > 1 for v in owners.values()):
        problems.append("an episode is listed by two modules")
    return problems


def finish_and_check(home: Path, expected_ids: list[str]) -> list[str]:
    """The next run must complete and leave everything absorbed and nothing stray on disk."""
    from agent_memory import AgentMemory, Namespace

    memory = AgentMemory.open(home)
    memory.consolidate(USER, _consolidation_config())
    problems = check_home(home, expected_ids)
    pending = memory.store.pending(Namespace(USER))
    if pending:
        problems.append(f"{len(pending)} episodes still pending after the next run")
    root = memory.registry.root
    stray = list((root / ".staging").glob("*")) if (root / ".staging").is_dir() else []
    named = {m.id for m in memory.registry.list(USER)}
    stray += [p for p in root.glob(f"{USER}/*/mod_*") if p.name not in named]
    if stray:
        problems.append(f"{len(stray)} stray module folders after the next run")
    return problems


def run_crash_trials(trials: int = 20, seed: int = 0, episodes: int = 8, backbone_model: str | None = None,
                     echo: Callable[[str], None] = print) -> dict[str, Any]:
    """``trials`` seeded kill-and-check rounds; returns figures and every violation (expected: none)."""
    from agent_memory.evals.tiny_model import write_tiny_llama

    rng = random.Random(seed)
    results: dict[str, Any] = {"check": "crash", "trials": trials, "seed": seed, "episodes": episodes, "runs": [], "violations": []}
    with tempfile.TemporaryDirectory(prefix="am-crash-") as tmp:
        model = backbone_model or str(write_tiny_llama(Path(tmp) / "tiny-llama"))
        calib_home = Path(tmp) / "calibration"
        ids = seed_home(calib_home, model, episodes, seed)
        proc = _spawn(calib_home)
        proc.stdout.readline()
        started = time.perf_counter()
        summary = proc.stdout.readline()  # printed when consolidate() returns, before the interpreter exits
        duration = time.perf_counter() - started
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"the uninterrupted consolidation failed: {err[-2000:]}")
        results["uninterrupted_seconds"] = round(duration, 2)
        results["uninterrupted"] = json.loads(summary)
        results["violations"] += [f"calibration: {p}" for p in finish_and_check(calib_home, ids)]
        echo(f"uninterrupted run: {duration:.1f} s, {results['uninterrupted']}; killing at random moments in it")
        for trial in range(trials):
            home = Path(tmp) / f"trial{trial}"
            ids = seed_home(home, model, episodes, seed + trial + 1)
            delay = rng.uniform(0.0, duration)
            proc = _spawn(home)
            proc.stdout.readline()  # "start": the consolidation begins now
            try:
                proc.wait(timeout=delay)
                killed = False
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed = True
            manifests = list((home / "modules" / USER).glob("*/manifest.json"))
            modules_at_kill = sum(len(json.loads(m.read_text())["modules"]) for m in manifests)
            after_crash = check_home(home, ids)
            after_next = finish_and_check(home, ids)
            run = {"trial": trial, "kill_after_s": round(delay, 2), "killed": killed,
                   "modules_at_kill": modules_at_kill, "violations": after_crash + after_next}
            results["runs"].append(run)
            results["violations"] += [f"trial {trial}: {p}" for p in run["violations"]]
            echo(f"trial {trial}: kill after {delay:.1f} s ({'killed' if killed else 'finished first'}); "
                 f"{len(run['violations'])} violations")
    results["killed"] = sum(r["killed"] for r in results["runs"])
    at_kill = [r["modules_at_kill"] for r in results["runs"] if r["killed"]]
    results["modules_at_kill"] = {str(n): at_kill.count(n) for n in sorted(set(at_kill))}
    results["lost_episodes"] = sum("lost" in v for v in results["violations"])
    results["half_modules"] = sum("half module" in v or "stray" in v for v in results["violations"])
    return results
