"""Where the worker gets pixels that were not uploaded: survey cutouts and allowlisted URLs.

One :class:`ImageSources` per process, built from the ``cutout_*`` settings on first
use (the runtime caches it), holds the cutout provider and the HTTP client used for
image URLs. Both are thread-safe, so a batch chunk fetches its rows concurrently
through the same instance.

A cutout comes back as decoded pixels (decoded once, rotated and cropped): the models
take them as they are, and only a single job's seen image is encoded as a PNG. When
the cutout service fails, the job's reason names the ``SKYSERVE_CUTOUT_*`` setting an
operator can change and says that uploading an image works meanwhile.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from services.worker.cutouts import (
    CutoutProvider,
    HttpCutoutProvider,
    LocalArchiveProvider,
    fetch_oriented_cutout,
    provider_from_settings,
)
from services.worker.settings import WorkerSettings
from shared.errors import CutoutUnavailable, HostNotAllowed
from shared.schemas import TargetInput

__all__ = ["UPLOAD_INSTEAD", "ImageSources"]

logger = logging.getLogger(__name__)

#: The way around any cutout failure, told with each one.
UPLOAD_INSTEAD = (
    "Meanwhile, uploading an image of the object works instead (a file in the job, or "
    "image_url/file in a catalog row)."
)


class ImageSources:
    """The process's cutout provider and image-URL fetcher, built once from settings.

    Invalid cutout settings do not stop the worker (uploads still work): they are
    logged once, and every request that needs the provider fails with a readable
    :class:`CutoutUnavailable` saying what is misconfigured.

    Parameters
    ----------
    settings
        The ``cutout_*`` settings (provider, URL template, allowlist, timeouts,
        retries, cache) and ``max_image_pixels``.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self._provider: CutoutProvider | None = None
        self._provider_problem: str | None = None
        self._fetcher: HttpCutoutProvider | None = None
        self._owned_fetcher = False
        try:
            self._provider = provider_from_settings(settings)
        except ValueError as exc:
            fix = (
                "add the template's host to SKYSERVE_CUTOUT_ALLOWED_HOSTS or change "
                "SKYSERVE_CUTOUT_URL_TEMPLATE"
                if "allowlist" in str(exc)
                else "fix the SKYSERVE_CUTOUT_* settings named there"
            )
            self._provider_problem = (
                f"This worker cannot fetch cutouts: its cutout settings are invalid ({exc}). "
                f"An operator must {fix}. {UPLOAD_INSTEAD}"
            )
            logger.error("Cutout provider not built: %s", exc)
        if self._provider is None and self._provider_problem is None:
            self._provider_problem = (
                "This worker has no cutout service (SKYSERVE_CUTOUT_PROVIDER=none), so "
                "catalog targets and sky positions cannot be imaged; an operator can set "
                f"SKYSERVE_CUTOUT_PROVIDER (sdss, legacy, http or local). {UPLOAD_INSTEAD}"
            )
        if isinstance(self._provider, HttpCutoutProvider):
            self._fetcher = self._provider
        else:
            self._fetcher = _standalone_fetcher(settings)
            self._owned_fetcher = self._fetcher is not None

    @property
    def provider(self) -> CutoutProvider:
        """The configured cutout provider.

        Raises
        ------
        CutoutUnavailable
            None is configured, or its settings are invalid.
        """
        if self._provider is None:
            raise CutoutUnavailable(self._provider_problem or "No cutout service is configured.")
        return self._provider

    def cutout(self, target: TargetInput) -> np.ndarray:
        """The oriented pixels of a resolved target: fetched, decoded once, turned by its PA,
        cropped; ``(side, side, 3)`` uint8 (:func:`services.worker.orientation.encode_png`
        makes the seen image's PNG of it).

        Raises
        ------
        CutoutUnavailable
            No provider, or it did not deliver (timeouts, errors, not an image); the
            detail names the setting to change and suggests an upload.
        HostNotAllowed
            A redirect off the allowlist (providers normally report it as unavailable).
        """
        resolved: dict[str, Any] = target.resolved or {}
        provider = self.provider
        try:
            return fetch_oriented_cutout(
                provider,
                target.ra_deg,
                target.dec_deg,
                target.fov_arcmin,
                pa_deg=target.pa_deg,
                name=resolved.get("name"),
                aliases=list(resolved.get("identifiers") or ()),
                max_pixels=self.settings.max_image_pixels,
            )
        except (CutoutUnavailable, HostNotAllowed) as exc:
            raise type(exc)(
                f"{exc.detail} {self._remedy(exc)} {UPLOAD_INSTEAD}", **exc.extra
            ) from exc

    def _remedy(self, exc: CutoutUnavailable | HostNotAllowed) -> str:
        """Which ``SKYSERVE_CUTOUT_*`` setting an operator changes for this failure."""
        settings, detail = self.settings, exc.detail.lower()
        elsewhere = (
            "point SKYSERVE_CUTOUT_PROVIDER (sdss, legacy) or SKYSERVE_CUTOUT_URL_TEMPLATE at a "
            "survey that serves this field, or serve files from a folder "
            "(SKYSERVE_CUTOUT_PROVIDER=local, SKYSERVE_CUTOUT_ARCHIVE_DIR)"
        )
        if isinstance(exc, HostNotAllowed) or "allowlist" in detail:
            setting = "add the host to SKYSERVE_CUTOUT_ALLOWED_HOSTS"
        elif isinstance(self._provider, LocalArchiveProvider):
            setting = (
                "add an image named after the object to SKYSERVE_CUTOUT_ARCHIVE_DIR (or list "
                "it in the folder's index.csv), or set SKYSERVE_CUTOUT_PROVIDER to a survey"
            )
        elif "connection failed" in detail or "cannot resolve" in detail:
            # Waiting longer does not help a worker that cannot reach the survey at all.
            setting = f"let the worker reach the survey (is it offline?), or {elsewhere}"
        elif "no answer within" in detail or "took longer" in detail:
            setting = (
                f"raise SKYSERVE_CUTOUT_TIMEOUT_SECONDS (now {settings.cutout_timeout_seconds:g}) "
                f"or SKYSERVE_CUTOUT_RETRIES (now {settings.cutout_retries}), or {elsewhere}"
            )
        elif "byte" in detail and "limit" in detail:
            setting = (
                f"raise SKYSERVE_CUTOUT_MAX_BYTES (now {settings.cutout_max_bytes:,}) or lower "
                f"SKYSERVE_CUTOUT_PIXELS (now {settings.cutout_pixels})"
            )
        else:
            setting = elsewhere
        return f"An operator can {setting}."

    def image_url(self, url: str) -> bytes:
        """The bytes behind a client's image URL, under the host allowlist and size limits.

        Raises
        ------
        HostNotAllowed
            The host (or a redirect) is off the allowlist, or no host is allowlisted.
        CutoutUnavailable
            Timeouts, connection failures, error statuses.
        ImageTooLarge, UnsupportedMediaType, InvalidImage
            The body is too big, not an image, or does not decode.
        """
        if self._fetcher is None:
            raise HostNotAllowed(
                f"{url!r} cannot be fetched: no image host is allowlisted on this worker "
                "(SKYSERVE_CUTOUT_ALLOWED_HOSTS is empty).",
                url=url,
            )
        return self._fetcher.fetch_url(url)

    def close(self) -> None:
        """Release HTTP connections."""
        if self._provider is not None:
            self._provider.close()
        if self._owned_fetcher and self._fetcher is not None:
            self._fetcher.close()


def _standalone_fetcher(settings: WorkerSettings) -> HttpCutoutProvider | None:
    """An allowlisted URL fetcher for a worker whose cutouts do not come over HTTP.

    :class:`HttpCutoutProvider` is both the cutout client and the checked URL fetcher;
    it insists on a template whose host is allowlisted, so one is made from the first
    allowlist entry. The template is never used: only :meth:`fetch_url` is called.
    """
    for entry in settings.cutout_allowed_hosts:
        host = entry.strip()
        if not host:
            continue
        if host.startswith("*."):
            host = "x" + host[1:]
        try:
            return HttpCutoutProvider(
                f"https://{host}/",
                settings.cutout_allowed_hosts,
                timeout_s=settings.cutout_timeout_seconds,
                retries=settings.cutout_retries,
                backoff_s=settings.cutout_backoff_seconds,
                max_bytes=settings.cutout_max_bytes,
                max_pixels=settings.max_image_pixels,
                allow_private_addresses=settings.cutout_allow_private_addresses,
            )
        except ValueError:
            logger.warning("Allowlist entry %r cannot seed a URL fetcher.", entry, exc_info=True)
    return None
