"""The worker's logs: the chosen format (``SKYSERVE_LOG_FORMAT``) and the job or batch id on every line.

Celery sets up its loggers first; the ``after_setup_*`` signals then put skyserve's
handler in place (JSON or text, with the secret-redacting filter), and the task
signals bind ``job_id`` or ``batch_id``/``chunk`` to the log context for as long
as a task runs, so every line it logs names the job it was about.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from services.worker.settings import get_settings
from shared.logs import JsonFormatter, RedactingFilter, bind, log_context

__all__: list[str] = []


def _install(logger: logging.Logger) -> None:
    settings = get_settings()
    for handler in logger.handlers:
        handler.addFilter(RedactingFilter())
        if settings.log_format == "json":
            handler.setFormatter(JsonFormatter())
    for name in ("shared", "services"):
        logging.getLogger(name).setLevel(settings.log_level.upper())


@signals.after_setup_logger.connect
def _root_logger(logger: logging.Logger, **_: Any) -> None:
    _install(logger)


@signals.after_setup_task_logger.connect
def _task_logger(logger: logging.Logger, **_: Any) -> None:
    _install(logger)


_tokens: dict[str, Any] = {}


@signals.task_prerun.connect
def _bind_ids(task_id: str = "", kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    kwargs = kwargs or {}
    ids = {
        "job_id": kwargs.get("job_id"),
        "batch_id": kwargs.get("batch_id"),
        "chunk": None if kwargs.get("chunk") is None else str(kwargs["chunk"]),
    }
    _tokens[task_id] = bind(**ids)


@signals.task_postrun.connect
def _unbind_ids(task_id: str = "", **_: Any) -> None:
    token = _tokens.pop(task_id, None)
    if token is not None:
        log_context.reset(token)
