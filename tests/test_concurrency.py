"""Adds and searches from threads and processes while a consolidation runs: nothing lost, nothing absorbed twice,
and what arrives during the run stays pending for the next one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest

from agent_memory import AgentMemory, MemoryConfig
from agent_memory.config import StoreConfig
from agent_memory.consolidation import ConsolidationConfig, LoraSettings
from agent_memory.store import EpisodicStore, NewEpisode
from agent_memory.types import Namespace

USER = Namespace("maria", "companion", "s1")
T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
SLOW = ConsolidationConfig(lora=LoraSettings(rank=4, alpha=8, max_epochs=8, stop_at_accuracy=1.0),
                           answer_tokens_per_rank=30, self_test_size=4, max_new_tokens=4)
CLIENT = """
import json, sys, time
from pathlib import Path
from agent_memory.config import StoreConfig
from agent_memory.embedder import OnnxEmbedder
from agent_memory.store import EpisodicStore
from agent_memory.types import Namespace
url, prefix, go, tag = sys.argv[1:5]
store = EpisodicStore.server(url, OnnxEmbedder.bundled(), StoreConfig(collection_prefix=prefix))
while not Path(go).exists():
    time.sleep(0.05)
ids = []
for i in range(4):
    ids.append(store.add(f"process {tag} says hello number {i}", Namespace("maria", "companion", "s2")).id)
    store.search("hello", Namespace("maria"), 3)
print(json.dumps(ids))
"""


def _store(kind, embedder, tmp_path, request, prefix):
    if kind == "embedded":
        return EpisodicStore.embedded(tmp_path / "store", embedder, StoreConfig(collection_prefix=prefix))
    return EpisodicStore.server(request.getfixturevalue("chroma_server").url, embedder, StoreConfig(collection_prefix=prefix))


@pytest.mark.parametrize("kind", ["embedded", "server"])
def test_writers_during_a_consolidation(kind, tmp_path, embedder, tiny, request):
    prefix = f"conc{kind[:3]}{os.getpid()}"
    store = _store(kind, embedder, tmp_path, request, prefix)
    memory = AgentMemory(store, tiny, MemoryConfig(home=str(tmp_path / "home")))
    initial = memory.add_many([NewEpisode(f"maria said fact number {i} about lisbon", USER, timestamp=T0 + timedelta(hours=i))
                               for i in range(6)])
    snapshot_taken = threading.Event()
    real_pending = store.pending

    def pending_then_signal(*args, **kwargs):
        result = real_pending(*args, **kwargs)
        snapshot_taken.set()  # from here on, every new episode arrives during the run
        return result

    store.pending = pending_then_signal
    go = tmp_path / "go"
    clients = []
    if kind == "server":  # other processes write through the same server
        url = request.getfixturevalue("chroma_server").url
        clients = [subprocess.Popen([sys.executable, "-c", CLIENT, url, prefix, str(go), str(n)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(2)]
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("result", memory.consolidate("maria", SLOW)))
    worker.start()
    assert snapshot_taken.wait(60)
    go.touch()
    added: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        try:
            for i in range(5):
                e = memory.add(f"thread {n} note {i}", Namespace("maria", "companion", "s3"))
                memory.search("note", "maria", k=3)
                with lock:
                    added.append(e.id)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    worker.join(120)
    for c in clients:
        out, err = c.communicate(timeout=120)
        assert c.returncode == 0, err[-2000:]
        added += json.loads(out.strip().splitlines()[-1])
    store.pending = real_pending

    assert not errors and "result" in outcome
    everything = {e.id: e for e in memory.list("maria")}
    assert len(everything) == len(initial) + len(added) == len(set(everything)), "nothing lost, nothing duplicated"
    assert all(everything[i].absorbed_by is None for i in added), "arrivals during the run stay pending"
    modules = memory.registry.list("maria")
    listed = [i for m in modules for i in m.episode_ids]
    assert sorted(listed) == sorted(e.id for e in initial) and len(listed) == len(set(listed)), "absorbed once"
    assert all(everything[e.id].absorbed_by in {m.id for m in modules} for e in initial)
    assert len(modules) >= 2, "the run made several modules, so the writers overlapped more than one commit"
    # the next run takes exactly the newcomers
    assert memory.consolidate("maria", SLOW).episodes_absorbed == len(added)
