"""What the framework examples share: a printer that also keeps the lines (tests read them) and the command line."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, Callable


def printer(echo: Callable[[str], Any]) -> tuple[list[str], Callable[..., None]]:
    """``(lines, say)``: ``say(text)`` echoes the text and appends it to ``lines``."""
    lines: list[str] = []

    def say(text: str = "") -> None:
        lines.append(text)
        echo(text)

    return lines, say


def main(run: Callable[[str | Path], Any], doc: str, name: str) -> None:
    """``python examples/NAME_example.py [--home DIR]``: ``run`` in DIR, or in a temporary folder removed after."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--home", help="memory home (default: a temporary folder)")
    args = parser.parse_args()
    if args.home:
        run(args.home)
    else:
        with tempfile.TemporaryDirectory(prefix=f"agent-memory-{name}-") as home:
            run(home)
