"""Result files that survive a kill: append-only JSON-lines logs (how the evals resume) and atomic JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
        _replace(path, clean)
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one finished result as a line of its own."""
    with path.open("a", encoding="utf-8") as sink:
        sink.write(json.dumps(row) + "\n")


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` to ``path`` atomically: a kill leaves the previous file, never half of one."""
    _replace(path, json.dumps(value, indent=2) + "\n")


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
