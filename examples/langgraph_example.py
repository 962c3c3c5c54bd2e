"""LangGraph on agent memory: a graph whose long-term store is episodic memory (offline, embedded SmolLM2).

    python examples/langgraph_example.py [--home DIR]

The graph has two nodes. ``remember`` saves what the user states (not questions) in the store under
``(user_id, "memories")``; ``respond`` searches the store for the message and answers on the memory's
backbone with what it found. Each session is its own LangGraph thread, so session 2 knows nothing of
session 1 except through the store: ``graph.compile(store=AgentMemoryStore(memory), checkpointer=...)``.
Store items are episodes, so ``AgentMemory.answer`` finds them too.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.runtime import Runtime

from agent_memory import AgentMemory
from agent_memory.integrations.langgraph import AgentMemoryStore
from example_cli import main, printer

SYSTEM = "You are a helpful assistant. Answer in one short sentence."


@dataclass
class Context:
    user_id: str


def build_graph(memory: AgentMemory):
    """The two-node graph, compiled with the memory as its store and an in-process checkpointer."""

    def remember(state: MessagesState, runtime: Runtime[Context]) -> dict:
        text = state["messages"][-1].text
        if not text.rstrip().endswith("?"):
            runtime.store.put((runtime.context.user_id, "memories"), uuid.uuid4().hex, {"text": text})
        return {}

    def respond(state: MessagesState, runtime: Runtime[Context]) -> dict:
        text = state["messages"][-1].text
        found = runtime.store.search((runtime.context.user_id, "memories"), query=text, limit=3)
        facts = [h.value["text"] for h in found if h.score is not None and h.score >= 0.3]
        system = SYSTEM + ("\nWhat you know about the user:\n" + "\n".join(f"- {f}" for f in facts) if facts else "")
        reply = memory.backbone.generate([{"role": "system", "content": system}, {"role": "user", "content": text}],
                                         max_new_tokens=32)
        return {"messages": [AIMessage(reply, response_metadata={"memories": facts})]}

    builder = StateGraph(MessagesState, context_schema=Context)
    builder.add_node("remember", remember)
    builder.add_node("respond", respond)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", "respond")
    return builder.compile(store=AgentMemoryStore(memory, index={"fields": ["text"]}), checkpointer=InMemorySaver())


def run(home: str | Path, echo=print) -> list[str]:
    """Run the two sessions in ``home``; returns the printed lines."""
    lines, say = printer(echo)

    memory = AgentMemory.open(home)
    graph = build_graph(memory)
    for session, message in [("s1", "My dog is called Biscuit."), ("s2", "What is my dog called?")]:
        out = graph.invoke({"messages": [("user", message)]}, {"configurable": {"thread_id": session}},
                           context=Context(user_id="sam"))
        reply = out["messages"][-1]
        say(f"session {session} (thread {session}, {len(out['messages'])} messages in it)")
        say(f"  Q: {message}")
        say(f"  A: {reply.content}")
        say(f"     memories used: {reply.response_metadata['memories']}")

    store = graph.store
    say(f"store namespaces: {store.list_namespaces()}")
    item = store.search(("sam", "memories"), limit=1)[0]
    say(f"item {item.key[:8]}... value={item.value} created {item.created_at:%Y-%m-%d %H:%M}")
    answer = memory.answer("What is my dog called?", "sam/langgraph/s3")
    say(f"AgentMemory.answer on the same memory: {answer.text} (route={answer.route})")
    return lines


if __name__ == "__main__":
    main(run, __doc__, "langgraph")
