"""What the client raises: refused requests, unreachable servers, waits that ran out."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import httpx

__all__ = [
    "SkyserveClientError",
    "SkyserveAPIError",
    "SkyserveConnectionError",
    "SkyserveTimeoutError",
    "problem_from_response",
]


class SkyserveClientError(Exception):
    """Base of every error the client raises."""


class SkyserveAPIError(SkyserveClientError):
    """The API answered with an error status (an RFC 9457 problem document).

    Parameters
    ----------
    status
        The HTTP status code.
    problem
        The problem document as sent (``type``, ``title``, ``status``, ``detail``,
        ``code`` and extra members such as ``suggestions`` or ``served_tasks``).
    retry_after
        Seconds the server asked the client to wait before trying again, if it said.
    """

    def __init__(
        self, status: int, problem: dict[str, Any], *, retry_after: float | None = None
    ) -> None:
        self.status = status
        self.problem = problem
        self.retry_after = retry_after
        super().__init__(str(self))

    @property
    def code(self) -> str | None:
        """The stable, machine-readable error code, e.g. ``unknown-task``."""
        return self.problem.get("code")

    @property
    def title(self) -> str:
        return str(self.problem.get("title") or _reason(self.status))

    @property
    def detail(self) -> str | None:
        return self.problem.get("detail")

    def __str__(self) -> str:
        text = f"{self.title} ({self.status})"
        if self.detail:
            text += f" — {self.detail}"
        suggestions = self.problem.get("suggestions")
        # The server's detail usually says "Did you mean …?" itself; say it once.
        if suggestions and "did you mean" not in (self.detail or "").lower():
            shown = suggestions if isinstance(suggestions, list) else [suggestions]
            text += f" Did you mean: {', '.join(map(str, shown))}?"
        return text


class SkyserveConnectionError(SkyserveClientError):
    """The API could not be reached (refused, DNS failure, dropped connection, timeout)."""


class SkyserveTimeoutError(SkyserveClientError):
    """A job or batch did not finish within the time the caller was willing to wait.

    Parameters
    ----------
    message
        What was being waited for, and for how long.
    last
        The last record read (a ``Job`` or a batch record), still unfinished.
    """

    def __init__(self, message: str, last: Any = None) -> None:
        super().__init__(message)
        self.last = last


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_from_response(response: httpx.Response) -> dict[str, Any]:
    """The problem document of an error response; a synthetic one for non-JSON bodies.

    Proxies and crashed servers answer with HTML or plain text; those still become a
    problem with the body's first few hundred characters as ``detail``.
    """
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and ("title" in body or "detail" in body):
        return {"status": response.status_code, **body}
    text = response.text.strip()
    return {
        "type": "about:blank",
        "title": _reason(response.status_code),
        "status": response.status_code,
        "detail": text[:500] or None,
    }
