"""Framework integrations (``agent_memory.integrations``): import the one you use.

* ``agent_memory.integrations.langchain`` - chat model over routed memory, retriever, memory tools, turn recorder.
* ``agent_memory.integrations.langgraph`` - ``AgentMemoryStore``, a LangGraph ``BaseStore`` whose items are episodes.
* ``agent_memory.integrations.llama_index`` - memory block, chat memory and LLM over routed memory.

Nothing is imported here, so using one framework never imports the others. ``shared`` holds what they
have in common and imports no framework.
"""
