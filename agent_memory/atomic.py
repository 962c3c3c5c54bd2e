"""Files replaced whole: a reader, or the next run after a kill, never sees half of one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, flush it to disk, then rename it over ``path``.

    A failure at any point leaves the previous ``path`` as it was and removes the temp file.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any, indent: int = 2) -> None:
    """``value`` as indented JSON, replaced atomically (:func:`write_text`)."""
    write_text(path, json.dumps(value, indent=indent) + "\n")
