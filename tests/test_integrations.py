"""The framework examples on the real embedded SmolLM2: a fact told in session 1 is answered in session 2.

Unit and contract tests of each integration are in test_integrations_{langchain,langgraph,llama_index}.py.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXAMPLES))


def session_lines(lines: list[str], session: str) -> list[str]:
    """The printed lines of one session block (from its header to the next unindented line)."""
    start = next(n for n, line in enumerate(lines) if line.startswith(f"session {session}"))
    block = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith(" "):
            break
        block.append(line)
    return block


@pytest.mark.slow
@pytest.mark.parametrize("name", ["langchain_example", "langgraph_example", "llama_index_example"])
def test_example_remembers_across_sessions(name, tmp_path):
    printed: list[str] = []
    lines = load_example(name).run(tmp_path / "home", echo=printed.append)
    assert lines == printed
    asked = session_lines(lines, "s2")
    assert "  Q: What is my dog called?" in asked
    (answer,) = [line for line in asked if line.startswith("  A: ")]
    assert "Biscuit" in answer  # only session 1 said it
    told = session_lines(lines, "s1")
    assert "  Q: My dog is called Biscuit." in told
    if name != "langgraph_example":  # the chat-model examples report the route: s2 answered from retrieval
        assert any("route=rag evidence=1" in line for line in asked)
    else:
        assert any("memories used: ['My dog is called Biscuit.']" in line for line in asked)
        assert any(line.startswith("AgentMemory.answer on the same memory:") and "Biscuit" in line for line in lines)
