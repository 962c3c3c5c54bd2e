"""The main job on the embedded default: ingest a multi-session conversation, consolidate, answer with routing.

    python examples/demo.py [--home DIR] [--conversation FILE]

1. Each turn goes into episodic memory (embedded Chroma) with its real timestamp.
2. After the sessions marked ``consolidate_after``, the nightly job runs: their episodes are
   distilled into a self-tested LoRA module on the embedded SmolLM2-135M-Instruct backbone.
3. In the current session, each question goes through the router, which answers from the
   module (adapter), retrieved episodes (RAG), the session's recent turns (ICL), a hybrid,
   or no memory, and says why. Answers, routes, reasons and timings are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from agent_memory import AgentMemory, Namespace, NewEpisode

HERE = Path(__file__).parent


def load_sessions(path: Path) -> tuple[dict, list[tuple[dict, list[NewEpisode]]]]:
    """The example file and its sessions as episodes: one per turn, a minute apart within a session."""
    data = json.loads(path.read_text(encoding="utf-8"))
    sessions = []
    for session in data["sessions"]:
        ns = Namespace(data["user_id"], data["agent_id"], session["session_id"])
        start = datetime.fromisoformat(session["started_at"])
        turns = [NewEpisode(t["text"], ns, timestamp=start + timedelta(minutes=n), speaker=t["speaker"], role=t["role"])
                 for n, t in enumerate(session["turns"])]
        sessions.append((session, turns))
    return data, sessions


def run(home: Path, conversation: Path, echo=print) -> list[dict]:
    started = time.perf_counter()
    memory = AgentMemory.open(home)
    data, sessions = load_sessions(conversation)
    scope = Namespace(data["user_id"], data["agent_id"])
    backbone = memory.backbone
    echo(f"memory home {home} ({memory.store.backend.kind}, {memory.store.embedder.name}); backbone {backbone.name} "
         f"on {backbone.device} ({backbone.dtype}), loaded in {backbone.load_seconds:.1f} s"
         f"{' from cache' if backbone.from_cache else ' (first load: converted and cached)'}")
    for session, turns in sessions:
        memory.add_many(turns)
        echo(f"session {session['session_id']} ({session['started_at'][:10]}): {len(turns)} turns stored")
        if session.get("consolidate_after"):
            t = time.perf_counter()
            result = memory.consolidate(scope)
            for m in result.modules:
                echo(f"  nightly consolidation: module {m.id} absorbed {m.facts} episodes (rank {m.rank}, "
                     f"{m.examples} QA examples, self-test recall {m.recall:.2f}) in {time.perf_counter() - t:.0f} s")
    here = Namespace(data["user_id"], data["agent_id"], data["current_session"])
    echo(f"\nasking in session {here.session_id}:")
    results = []
    for qa in data["questions"]:
        answer = memory.answer(qa["question"], here)
        echo(f"\nQ: {qa['question']}\nA: {answer.text}")
        echo(f"   route={answer.route} modules={answer.modules or '-'} evidence={len(answer.evidence)} "
             f"prompt={answer.prompt_tokens} tokens")
        echo(f"   why: {answer.reason}")
        echo("   latency " + ", ".join(f"{k} {v:.0f} ms" for k, v in answer.latency_ms.items()))
        results.append({"question": qa["question"], "expected": qa["answer"], "expected_route": qa.get("route"),
                        **answer.to_dict()})
    found = sum(r["expected"].lower() in r["answer"].lower() for r in results)
    routes = sum(r["route"] == r["expected_route"] for r in results)
    echo(f"\n{found}/{len(results)} answers contain the expected fact; {routes}/{len(results)} took the expected "
         f"route; total {time.perf_counter() - started:.1f} s")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="memory home (default: a fresh temporary folder)")
    parser.add_argument("--conversation", type=Path, default=HERE / "conversation.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from agent_memory.cli import quiet_progress_bars

    quiet_progress_bars()
    if args.home:
        run(args.home, args.conversation)
    else:
        with tempfile.TemporaryDirectory(prefix="agent-memory-demo-") as tmp:
            run(Path(tmp), args.conversation)


if __name__ == "__main__":
    main()
