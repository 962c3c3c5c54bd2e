"""LlamaIndex on agent memory: a fact told in session 1 is answered in session 2 (offline, embedded SmolLM2).

    python examples/llama_index_example.py [--home DIR]

1. Each session is a ``SimpleChatEngine`` with ``AgentMemoryLLM`` (answers through the router) and
   ``AgentMemoryBuffer`` (the chat memory: each completed turn becomes an episode).
2. Session 2 answers from the session-1 turn; the route and evidence come back on the message.
3. Any other LlamaIndex LLM gets the same memories as text: ``AgentMemoryBuffer.get`` adds a system
   note, and ``AgentMemoryBlock`` does it inside LlamaIndex's own ``Memory``.
"""

from __future__ import annotations

from pathlib import Path

from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.memory import Memory

from agent_memory import AgentMemory, BackboneConfig, MemoryConfig
from agent_memory.integrations.llama_index import AgentMemoryBlock, AgentMemoryBuffer, AgentMemoryLLM
from example_cli import main, printer

USER = "sam"


def run(home: str | Path, echo=print) -> list[str]:
    """Run the two sessions in ``home``; returns the printed lines."""
    lines, say = printer(echo)

    memory = AgentMemory.open(home, config=MemoryConfig(backbone=BackboneConfig(max_new_tokens=32)))  # short replies
    for session, message in [("s1", "My dog is called Biscuit."), ("s2", "What is my dog called?")]:
        namespace = f"{USER}/assistant/{session}"
        buffer = AgentMemoryBuffer(memory=memory, namespace=namespace, user_speaker="Sam")
        engine = SimpleChatEngine.from_defaults(llm=AgentMemoryLLM(memory=memory, namespace=namespace), memory=buffer)
        response = engine.chat(message)
        info = buffer.get_all()[-1].additional_kwargs
        say(f"session {session}")
        say(f"  Q: {message}")
        say(f"  A: {response.response}")
        say(f"     route={info['route']} evidence={len(info['evidence'])} ({info['reason']})")

    note = AgentMemoryBuffer(memory=memory, namespace=f"{USER}/assistant/s3").get(input="What is my dog called?")
    say("what another LLM would get from AgentMemoryBuffer.get (system note):")
    say("  " + note[0].content.replace("\n", "\n  "))
    chat_memory = Memory.from_defaults(session_id="s4", memory_blocks=[AgentMemoryBlock(memory=memory,
                                                                                        namespace=f"{USER}/assistant")])
    block = chat_memory.get(input="What is my dog called?")[0].content
    say("and from LlamaIndex's Memory with an AgentMemoryBlock:")
    say("  " + block.strip().replace("\n", "\n  "))
    return lines


if __name__ == "__main__":
    main(run, __doc__, "llama-index")
