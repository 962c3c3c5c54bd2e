"""Frozen records shared by every layer: namespaces, episodes, search hits."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Mapping

from agent_memory.errors import InvalidNamespaceError

#: Ids are path- and Chroma-safe: no slashes, no dots at the start, no spaces.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$")
DEFAULT_AGENT = "default"
DEFAULT_SESSION = "default"


def check_id(field_name: str, value: Any, *, required: bool = True) -> str | None:
    """Validate one namespace component and return it (``None`` if allowed)."""
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _ID_RE.match(value) or ".." in value:
        raise InvalidNamespaceError(
            field_name,
            f"{value!r} is not a valid id",
            "use 1-128 characters from letters, digits and _ . @ : -, starting with a letter or digit",
        )
    return value


@dataclass(frozen=True)
class Namespace:
    """Who a memory belongs to: a user, one of their agents, one session.

    On a write, a missing agent or session becomes ``"default"``. On a read, a
    missing agent or session means "all of them" within the user: a namespace
    is a scope, and a scope never reaches outside its user.
    """

    user_id: str
    agent_id: str | None = None
    session_id: str | None = None

    def __post_init__(self) -> None:
        check_id("user_id", self.user_id)
        check_id("agent_id", self.agent_id, required=False)
        check_id("session_id", self.session_id, required=False)
        if self.session_id is not None and self.agent_id is None:
            raise InvalidNamespaceError(
                "agent_id", "a session was given without its agent", "pass agent_id too (the default is 'default')"
            )

    @classmethod
    def parse(cls, text: str) -> "Namespace":
        """Parse ``user[/agent[/session]]``."""
        if not isinstance(text, str) or not text or text.count("/") > 2:
            raise InvalidNamespaceError(
                "namespace", f"{text!r} is malformed", "write it as user[/agent[/session]], e.g. alice/helper/s1"
            )
        return cls(*text.split("/"))

    def for_write(self) -> "Namespace":
        """The fully specified namespace an episode is stored under."""
        return Namespace(self.user_id, self.agent_id or DEFAULT_AGENT, self.session_id or DEFAULT_SESSION)

    def contains(self, other: "Namespace") -> bool:
        """True when ``other`` (a stored episode's namespace) lies inside this scope."""
        return (
            self.user_id == other.user_id
            and (self.agent_id is None or self.agent_id == other.agent_id)
            and (self.session_id is None or self.session_id == other.session_id)
        )

    def __str__(self) -> str:
        return "/".join(p for p in (self.user_id, self.agent_id, self.session_id) if p is not None)


@dataclass(frozen=True)
class Episode:
    """One remembered turn or fact, as stored.

    ``absorbed_by`` is the id of the LoRA module that consolidated this episode,
    or ``None`` while it is pending consolidation.
    """

    id: str
    text: str
    namespace: Namespace
    timestamp: datetime
    speaker: str = ""
    role: str = "user"
    metadata: Mapping[str, Any] = field(default_factory=dict)
    absorbed_by: str | None = None
    version: int = 1
    created_at: datetime | None = None

    def with_changes(self, **changes: Any) -> "Episode":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form used by the CLI and integrations."""
        return {
            "id": self.id,
            "text": self.text,
            "user_id": self.namespace.user_id,
            "agent_id": self.namespace.agent_id,
            "session_id": self.namespace.session_id,
            "speaker": self.speaker,
            "role": self.role,
            "timestamp": self.timestamp.isoformat(),
            "metadata": dict(self.metadata),
            "absorbed_by": self.absorbed_by,
            "version": self.version,
        }


@dataclass(frozen=True)
class SearchHit:
    """An episode returned by a search, with its cosine similarity to the query."""

    episode: Episode
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.episode.to_dict(), "score": round(self.score, 6)}
