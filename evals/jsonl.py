"""Append-only JSON-lines result logs that survive a kill: how the evals resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent_memory.atomic import write_text
from agent_memory.errors import ValidationError


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of ``path`` (none if it does not exist).

    A line a kill cut short is dropped (its work runs again) and the file is rewritten without it,
    atomically, so the next append starts on a fresh line.
    """
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    clean = "".join(json.dumps(r) + "\n" for r in rows)
    if text != clean:
        write_text(path, clean)
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one finished result as a line of its own."""
    with path.open("a", encoding="utf-8") as sink:
        sink.write(json.dumps(row) + "\n")


def same_question(texts: dict[tuple[str, int], str], row: dict[str, Any], option: str, where: Path) -> None:
    """Refuse a row whose question text differs from the one first read under its (sample_id, index) in ``texts``."""
    key = (row["sample_id"], row["index"])
    if texts.setdefault(key, row["question"]) != row["question"]:
        raise ValidationError(option, f"question {key[1]} of {key[0]} is {row['question']!r} in {where} but "
                              f"{texts[key]!r} in an earlier run", "use runs made on the same data file")
