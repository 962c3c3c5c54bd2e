"""The main job on the embedded default: ingest a multi-session conversation, answer from memory.

    python examples/demo.py [--home DIR] [--conversation FILE]

Each turn goes into episodic memory (embedded Chroma) with its real timestamp;
each question is answered by the embedded SmolLM2-135M-Instruct backbone with
the retrieved episodes (dated) in its prompt.
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


def load_conversation(path: Path) -> tuple[Namespace, list[NewEpisode], list[dict]]:
    """Turn the example file into episodes: one per turn, a minute apart within a session."""
    data = json.loads(path.read_text(encoding="utf-8"))
    episodes = []
    for session in data["sessions"]:
        ns = Namespace(data["user_id"], data["agent_id"], session["session_id"])
        start = datetime.fromisoformat(session["started_at"])
        for n, turn in enumerate(session["turns"]):
            episodes.append(
                NewEpisode(turn["text"], ns, timestamp=start + timedelta(minutes=n), speaker=turn["speaker"], role=turn["role"])
            )
    return Namespace(data["user_id"], data["agent_id"]), episodes, data["questions"]


def run(home: Path, conversation: Path, echo=print) -> list[dict]:
    started = time.perf_counter()
    memory = AgentMemory.open(home)
    scope, episodes, questions = load_conversation(conversation)
    memory.add_many(episodes)
    sessions = len({e.namespace.session_id for e in episodes})
    echo(f"ingested {len(episodes)} turns from {sessions} sessions into {home} "
         f"({memory.store.backend.kind}, {memory.store.embedder.name})")
    backbone = memory.backbone
    echo(f"backbone {backbone.name} on {backbone.device} ({backbone.dtype}), loaded in {backbone.load_seconds:.1f} s"
         f"{' from cache' if backbone.from_cache else ' (first load: converted and cached)'}")
    results = []
    for qa in questions:
        answer = memory.answer(qa["question"], scope, k=4)
        top = answer.evidence[0].episode if answer.evidence else None
        echo(f"\nQ: {qa['question']}\nA: {answer.text}")
        echo(f"   route={answer.route} expected~{qa['answer']!r} top evidence: {top.text if top else '-'}")
        echo("   latency " + ", ".join(f"{k} {v:.0f} ms" for k, v in answer.latency_ms.items())
             + f"; prompt {answer.prompt_tokens} tokens")
        results.append({"question": qa["question"], "expected": qa["answer"], **answer.to_dict()})
    found = sum(r["expected"].lower() in r["answer"].lower() for r in results)
    echo(f"\n{found}/{len(results)} answers contain the expected fact; total {time.perf_counter() - started:.1f} s")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="memory home (default: a fresh temporary folder)")
    parser.add_argument("--conversation", type=Path, default=HERE / "conversation.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if args.home:
        run(args.home, args.conversation)
    else:
        with tempfile.TemporaryDirectory(prefix="agent-memory-demo-") as tmp:
            run(Path(tmp), args.conversation)


if __name__ == "__main__":
    main()
