"""One exception hierarchy for the whole package.

Every error says what was wrong and what to do about it. Input errors name the
offending field so callers (and the CLI) can point the user at it.
"""

from __future__ import annotations


class AgentMemoryError(Exception):
    """Base class of every error raised by agent_memory."""


class ValidationError(AgentMemoryError, ValueError):
    """A caller passed a bad value. Nothing was written.

    ``field`` names the argument or record field; ``fix`` says what to pass instead.
    """

    def __init__(self, field: str, problem: str, fix: str) -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field}: {problem}; {fix}")


class InvalidTextError(ValidationError):
    """Episode text is empty, too long, not a string or not valid Unicode."""


class InvalidTimestampError(ValidationError):
    """A timestamp is naive, not a datetime, or cannot be parsed."""


class InvalidNamespaceError(ValidationError):
    """A user / agent / session id is missing or malformed."""


class InvalidFilterError(ValidationError):
    """A metadata filter uses an unknown operator, field or value type."""


class InvalidMetadataError(ValidationError):
    """Episode metadata has a reserved key or a value Chroma cannot store."""


class ConfigError(ValidationError):
    """A configuration field has an invalid value."""


class NotFoundError(AgentMemoryError, KeyError):
    """The requested episode (or other object) does not exist in this namespace."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class StoreError(AgentMemoryError):
    """The episodic store failed (server unreachable, incompatible collection, ...)."""


class BackboneError(AgentMemoryError):
    """The backbone language model could not be located, loaded or run."""
