"""Typed errors that reach users: each message names the problem and how to fix it."""

from __future__ import annotations


class EditxError(Exception):
    """Base class: a problem with a request, an input file or the model files (never a bug)."""


class AudioError(EditxError):
    """Input audio that cannot be used: not audio, empty, non-finite, bad rate, too long."""


class ModelFilesError(EditxError):
    """A model directory or file that is missing, incomplete or not in the official layout."""


class ValidationError(EditxError, ValueError):
    """A request field with a bad value; the message lists what is allowed."""


class BackendUnsupportedError(EditxError):
    """The active backend cannot do what was asked (e.g. an edit that needs the real weights)."""


class QueueFullError(EditxError):
    """The engine's request queue is full; retry after `retry_after_s` (HTTP 429 + Retry-After)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StreamLimitError(QueueFullError):
    """Too many streaming requests are open at once (EngineConfig.max_streams); retry later (429)."""


class EngineClosedError(EditxError):
    """The engine is closed (or closing, or its worker stopped): it takes no new work (HTTP 503)."""


class CancelledError(EditxError):
    """The request was cancelled by its caller before it finished."""


class StreamBackpressureError(CancelledError):
    """A stream's consumer fell too far behind (or stopped reading); the request was cancelled so
    the engine never buffers without bound nor waits for one slow reader."""


def name_some(items: list[str], limit: int = 8) -> str:
    """`items` for an error message: the first `limit` of them, then how many more ("none" if empty)."""
    if not items:
        return "none"
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
