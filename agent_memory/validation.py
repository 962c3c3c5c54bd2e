"""Checks on everything a caller hands the store, done before anything is written.

Each check raises a :class:`~agent_memory.errors.ValidationError` subclass that
names the field and says how to fix it.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Mapping

from agent_memory.errors import (
    InvalidMetadataError,
    InvalidTextError,
    InvalidTimestampError,
    ValidationError,
)

#: Keys the store uses for its own bookkeeping; user metadata may not use them.
RESERVED_KEYS = frozenset(
    {
        "id",
        "text",
        "user_id",
        "agent_id",
        "session_id",
        "speaker",
        "role",
        "timestamp",
        "ts",
        "ts_iso",
        "created",
        "absorbed_by",
        "version",
        "current",
        "episode_id",
    }
)
ROLES = ("user", "assistant", "system", "tool", "observation")
MAX_LABEL_CHARS = 256
MAX_METADATA_KEYS = 64


def check_text(value: Any, *, max_chars: int, field: str = "text") -> str:
    """Episode text: a non-blank string of valid Unicode within ``max_chars``."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidTextError(
                field, f"bytes are not valid UTF-8 (at byte {exc.start})", "pass UTF-8 text or a str"
            ) from None
    if not isinstance(value, str):
        raise InvalidTextError(field, f"expected a string, got {type(value).__name__}", "pass the text as a str")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidTextError(
            field,
            f"contains a lone surrogate at character {exc.start}",
            "decode the source with errors='replace' or remove the character",
        ) from None
    if "\x00" in value:
        raise InvalidTextError(field, "contains a NUL character", "remove NUL (\\x00) characters")
    if not value.strip():
        raise InvalidTextError(field, "is empty or only whitespace", "pass the text of the turn")
    if len(value) > max_chars:
        raise InvalidTextError(
            field,
            f"has {len(value)} characters, over the limit of {max_chars}",
            "split it into several episodes or raise StoreConfig.max_text_chars",
        )
    return value


def check_label(value: Any, field: str) -> str:
    """A short free-text label such as a speaker name."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else None
    if text is None:
        raise ValidationError(field, f"expected a string, got {type(value).__name__}", f"pass {field} as a str")
    if len(text) > MAX_LABEL_CHARS or "\x00" in text:
        raise ValidationError(field, "is too long or contains NUL", f"use at most {MAX_LABEL_CHARS} plain characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(field, "contains a lone surrogate", "pass valid Unicode text") from None
    return text


def check_role(value: Any) -> str:
    if value not in ROLES:
        raise ValidationError("role", f"{value!r} is not a known role", f"use one of {', '.join(ROLES)}")
    return value


def check_timestamp(value: Any, field: str = "timestamp") -> datetime:
    """A timezone-aware datetime, or an ISO-8601 string with an offset."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidTimestampError(
                field, f"{value!r} is not ISO-8601", "write it like 2024-05-01T14:30:00+02:00"
            ) from None
    if not isinstance(value, datetime):
        raise InvalidTimestampError(
            field, f"expected a datetime, got {type(value).__name__}", "pass a timezone-aware datetime"
        )
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise InvalidTimestampError(
            field, f"{value.isoformat()} has no timezone", "add a UTC offset, e.g. 2024-05-01T14:30:00+00:00"
        )
    return value


def check_scalar(
    value: Any, field: str, error: type[ValidationError] = InvalidMetadataError
) -> str | int | float | bool:
    """A value Chroma can store and compare: str, int, float (finite) or bool."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise error(field, "contains a lone surrogate", "pass valid Unicode text") from None
        return value
    if isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise error(field, f"{value!r} is not a finite number", "pass a finite float")
        return value
    raise error(field, f"values of type {type(value).__name__} are not supported", "use str, int, float or bool")


def check_metadata(value: Any) -> dict[str, str | int | float | bool]:
    """Flat user metadata: string keys that are not reserved, scalar values."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidMetadataError(
            "metadata", f"expected a mapping, got {type(value).__name__}", "pass a dict of str -> scalar"
        )
    if len(value) > MAX_METADATA_KEYS:
        raise InvalidMetadataError("metadata", f"has {len(value)} keys", f"use at most {MAX_METADATA_KEYS}")
    out: dict[str, str | int | float | bool] = {}
    for key, item in value.items():
        check_metadata_key(key)
        out[key] = check_scalar(item, f"metadata.{key}")
    return out


def check_metadata_key(key: Any, field: str = "metadata") -> str:
    if not isinstance(key, str) or not key or len(key) > 64 or key.startswith("$"):
        raise InvalidMetadataError(field, f"key {key!r} is not allowed", "use a non-empty str key of at most 64 chars")
    if key in RESERVED_KEYS:
        raise InvalidMetadataError(
            field, f"key {key!r} is reserved", "rename it; reserved keys are " + ", ".join(sorted(RESERVED_KEYS))
        )
    return key
