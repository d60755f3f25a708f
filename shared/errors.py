"""The one error family: every client-facing failure is a ``SkyserveError``.

The API maps them to RFC 9457 ``application/problem+json``; the worker stores them
in the job record so a failed job carries the same readable reason. They pickle,
so they survive a trip through Celery.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "PROBLEM_TYPE_BASE",
    "BatchTooLarge",
    "CutoutUnavailable",
    "Forbidden",
    "HostNotAllowed",
    "ImageTooLarge",
    "InvalidImage",
    "InvalidRequest",
    "JobNotCancellable",
    "JobNotFound",
    "ModelIntegrityError",
    "NoImageYet",
    "NonFiniteAnswer",
    "RateLimited",
    "RegistryUnavailable",
    "RequestTimeout",
    "RequestTooLarge",
    "ServiceUnavailable",
    "SkyserveError",
    "TooManyJobs",
    "Unauthenticated",
    "UnknownModelVersion",
    "UnknownTarget",
    "UnknownTask",
    "UnsupportedMediaType",
    "all_error_classes",
]

PROBLEM_TYPE_BASE = "https://skyserve.dev/problems/"


class SkyserveError(Exception):
    """Base of every error a client may see.

    Parameters
    ----------
    detail
        What went wrong for this request and how to fix it, in words a user can act on.
    extra
        Additional JSON-able members for the problem document (e.g. ``suggestions``).
    """

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    #: Seconds a client should wait before trying again (sent as ``Retry-After``), for
    #: errors that pass by themselves.
    retry_after: ClassVar[int | None] = None

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions with keyword extras do not pickle by default; Celery needs them to.
        return (_rebuild, (type(self), self.detail, self.extra))

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        """Render as an RFC 9457 problem document."""
        problem: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance:
            problem["instance"] = instance
        problem.update(self.extra)
        return problem


def _rebuild(cls: type[SkyserveError], detail: str, extra: dict[str, Any]) -> SkyserveError:
    return cls(detail, **extra)


class InvalidRequest(SkyserveError):
    code, status, title = "invalid-request", 422, "The request is not valid"


class InvalidImage(SkyserveError):
    code, status, title = "invalid-image", 422, "The image cannot be read"


class ImageTooLarge(SkyserveError):
    code, status, title = "image-too-large", 413, "The image is too large"


class BatchTooLarge(SkyserveError):
    code, status, title = "batch-too-large", 413, "The batch is too large to store"


class UnsupportedMediaType(SkyserveError):
    code, status, title = "unsupported-media-type", 415, "The file type is not supported"


class UnknownTask(SkyserveError):
    code, status, title = "unknown-task", 422, "No such task is served"


class UnknownModelVersion(SkyserveError):
    code, status, title = "unknown-model-version", 404, "No such model version"


class JobNotFound(SkyserveError):
    code, status, title = "job-not-found", 404, "No such job"


class NoImageYet(SkyserveError):
    code, status, title = "no-image-yet", 409, "The job has no evaluated image"


class JobNotCancellable(SkyserveError):
    code, status, title = "job-not-cancellable", 409, "The job has already finished"


class UnknownTarget(SkyserveError):
    code, status, title = "unknown-target", 404, "No catalogued object matches"


class CutoutUnavailable(SkyserveError):
    code, status, title = "cutout-unavailable", 424, "The cutout service did not deliver an image"


class HostNotAllowed(SkyserveError):
    code, status, title = "host-not-allowed", 422, "That host is not on the allowlist"


class RegistryUnavailable(SkyserveError):
    code, status, title = "registry-unavailable", 503, "The model registry cannot be read"


class ModelIntegrityError(SkyserveError):
    code, status, title = "model-integrity", 503, "A model file failed its checksum"


class ServiceUnavailable(SkyserveError):
    code, status, title = "service-unavailable", 503, "A backing service is unavailable"
    retry_after = 5


class NonFiniteAnswer(SkyserveError):
    code, status, title = "non-finite-answer", 503, "The model gave no finite answer"


class Unauthenticated(SkyserveError):
    code, status, title = "unauthenticated", 401, "An API key is required"


class Forbidden(SkyserveError):
    code, status, title = "forbidden", 403, "This API key may not do that"


class RateLimited(SkyserveError):
    """Too many requests; ``retry_after`` (seconds) becomes the ``Retry-After`` header."""

    code, status, title = "rate-limited", 429, "Too many requests"


class TooManyJobs(SkyserveError):
    """Too many unfinished jobs for one key; ``retry_after`` as for :class:`RateLimited`."""

    code, status, title = "too-many-jobs", 429, "Too many unfinished jobs"


class RequestTooLarge(SkyserveError):
    code, status, title = "request-too-large", 413, "The request body is too large"


class RequestTimeout(SkyserveError):
    code, status, title = "request-timeout", 503, "The request took too long"


def all_error_classes() -> list[type[SkyserveError]]:
    """Every concrete error class, for documentation and the uniqueness test."""
    found: list[type[SkyserveError]] = []
    stack = list(SkyserveError.__subclasses__())
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.code)
