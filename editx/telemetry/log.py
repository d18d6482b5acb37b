"""Structured logging set-up for entry points only (the library itself just gets loggers)."""

from __future__ import annotations

import json
import logging
import sys
import time

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra={...}` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class ConsoleFormatter(logging.Formatter):
    """Human-readable: time, level, logger, message, then key=value for extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        extras = " ".join(
            f"{k}={v}" for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")
        )
        line = f"{ts} {record.levelname:<5} {record.name}: {record.getMessage()}"
        if extras:
            line += f"  {extras}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(fmt: str = "console", level: int = logging.INFO, stream=None) -> None:
    """Install one handler on the `editx` logger; idempotent. Called by entry points only."""
    logger = logging.getLogger("editx")
    for h in list(logger.handlers):
        if getattr(h, "_editx", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler._editx = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def log_event(logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields) -> None:
    """Emit one structured line: message `event`, `fields` as top-level keys (JSON) or key=value.

    For per-request lines (`log_event(log, "request", **timeline.to_dict())`) and cache events. Field
    names that clash with LogRecord attributes (e.g. `name`, `msg`) get a trailing underscore.
    """
    if not logger.isEnabledFor(level):
        return
    extra = {"event": event}
    for key, value in fields.items():
        extra[f"{key}_" if key in _RESERVED or key == "event" else key] = value
    logger.log(level, event, extra=extra, stacklevel=2)
