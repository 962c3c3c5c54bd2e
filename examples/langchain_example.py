"""LangChain on agent memory: a fact told in session 1 is answered in session 2 (offline, embedded SmolLM2).

    python examples/langchain_example.py [--home DIR]

1. Session 1: ``AgentMemoryChatModel`` answers; ``AgentMemoryRecorder`` (a callback handler) writes
   the user's message and the reply into episodic memory once the reply exists.
2. Session 2: a new conversation asks about it; the router finds the session-1 turn and answers from
   it (route, reason and evidence come back in ``response_metadata``).
3. The same memory as a retriever and as tools an agent can call.
"""

from __future__ import annotations

from pathlib import Path

from agent_memory import AgentMemory, BackboneConfig, MemoryConfig
from agent_memory.integrations.langchain import (
    AgentMemoryChatModel,
    AgentMemoryRecorder,
    AgentMemoryRetriever,
    memory_tools,
)
from example_cli import main, printer

USER = "sam"


def run(home: str | Path, echo=print) -> list[str]:
    """Run the two sessions in ``home``; returns the printed lines."""
    lines, say = printer(echo)

    memory = AgentMemory.open(home, config=MemoryConfig(backbone=BackboneConfig(max_new_tokens=32)))  # short replies
    for session, message in [("s1", "My dog is called Biscuit."), ("s2", "What is my dog called?")]:
        namespace = f"{USER}/assistant/{session}"
        chat = AgentMemoryChatModel(memory=memory, namespace=namespace)
        recorder = AgentMemoryRecorder(memory, namespace, user_speaker="Sam")
        reply = chat.invoke(message, config={"callbacks": [recorder]})
        meta = reply.response_metadata
        say(f"session {session}")
        say(f"  Q: {message}")
        say(f"  A: {reply.content}")
        say(f"     route={meta['route']} evidence={len(meta['evidence'])} ({meta['reason']})")
        say(f"     recorded {len(recorder.recorded)} episodes in {namespace}")

    say("retriever (all of sam's sessions):")
    for doc in AgentMemoryRetriever(memory=memory, namespace=USER, k=2).invoke("the dog's name"):
        say(f"  {doc.metadata['session_id']} {doc.metadata['role']}: {doc.page_content} (score {doc.metadata['score']:.2f})")

    save, search, _forget = memory_tools(memory, f"{USER}/assistant/s2")
    save.invoke({"text": "Sam's sister Marta lives in Porto."})
    call = {"name": search.name, "args": {"query": "Where does Marta live?", "k": 1}, "id": "call-1", "type": "tool_call"}
    say(f"tool {search.name} -> {search.invoke(call).content}")
    return lines


if __name__ == "__main__":
    main(run, __doc__, "langchain")
