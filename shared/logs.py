"""Logging for every skyserve process: plain text for people, or one JSON object per line.

``SKYSERVE_LOG_FORMAT=json`` makes each record a JSON object with ``time``, ``level``,
``logger``, ``message`` and, when known, ``request_id`` (API) and ``job_id`` /
``batch_id`` (worker), set through :data:`log_context` by the API's request middleware
and the worker's task signals, so a request can be followed into the job it made.

What is never logged: API keys (only their public id), request bodies or image
bytes. :class:`RedactingFilter` is the safety net: any ``sk_…`` token or bearer
header that reaches a message anyway is masked.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "RedactingFilter", "bind", "configure_logging", "log_context"]

#: Ids that describe what the current request or task is about.
log_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar(
    "skyserve_log_context", default={}
)

_SECRET = re.compile(r"(sk_[0-9a-f]{12}_)[A-Za-z0-9_-]+|(?i:(bearer)\s+)[A-Za-z0-9._~+/=-]+")
_TEXT = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"


def bind(**ids: str | None) -> contextvars.Token[dict[str, str]]:
    """Add ids to the log context of the current request or task; returns the reset token."""
    merged = {**log_context.get(), **{k: v for k, v in ids.items() if v}}
    return log_context.set(merged)


def _redact(text: str) -> str:
    return _SECRET.sub(lambda m: (m.group(1) + "***") if m.group(1) else f"{m.group(2)} ***", text)


class RedactingFilter(logging.Filter):
    """Mask API key secrets and bearer tokens; attach the current log context."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = _redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        context = log_context.get()
        record.context = "".join(f" [{k}={v}]" for k, v in context.items()) if context else ""
        record.ids = context
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "ids", None) or log_context.get())
        for name in ("method", "path", "status", "duration_ms", "key_id", "client"):
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exc_info"] = _redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    """Send skyserve's logs (and the libraries') to stderr in the chosen format.

    Idempotent: a second call replaces the handler the first one installed.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_skyserve", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._skyserve = True  # type: ignore[attr-defined]
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("shared", "services", "skyserve"):
        logging.getLogger(name).setLevel(level.upper())
