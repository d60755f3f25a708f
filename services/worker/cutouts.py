"""Where catalog and coordinate jobs get their pixels: survey cutout services or a local archive.

:class:`HttpCutoutProvider` fills a URL template (presets for the SDSS SkyServer and
the Legacy Survey), fetches with explicit timeouts, follows redirects only within a
host allowlist, retries transient failures with exponential back-off, caps the
size, checks that the body is an image, and caches good images on disk under the
URL's sha256. The same rules apply to user-supplied image URLs (:meth:`fetch_url`).

Besides the host allowlist, every connection goes through :class:`PinnedTransport`:
the host name is resolved once, every address it resolves to must be public (not
private, loopback, link-local, multicast or reserved) unless the deployment allows
private addresses, and the connection is made to that checked address (TLS still
verifies the certificate for the name). A name that resolves to a public address
when checked and to 127.0.0.1 when connected (DNS rebinding) therefore never
reaches the private one. A body that is not an image is refused without any of it
reaching the client: its bytes may be someone's private page.
:class:`LocalArchiveProvider` serves files from a folder by object name or position.
Orientation (rotate by the position angle, crop to the field) lives in
:mod:`services.worker.orientation`. Only the worker fetches pixels: the API
never imports this module.
"""

from __future__ import annotations

import csv
import hashlib
import ipaddress
import logging
import math
import os
import socket
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit

import httpx
import numpy as np

from services.worker.orientation import orient_cutout, orient_pixels, padded_fov_arcmin
from shared.errors import (
    CutoutUnavailable,
    HostNotAllowed,
    ImageTooLarge,
    InvalidImage,
    SkyserveError,
    UnsupportedMediaType,
)
from shared.preprocessing import inspect_image
from shared.resolver import normalise_identifier

if TYPE_CHECKING:
    from services.worker.settings import WorkerSettings

__all__ = [
    "CUTOUT_PRESETS",
    "CutoutProvider",
    "HttpCutoutProvider",
    "LocalArchiveProvider",
    "PinnedTransport",
    "check_address",
    "fetch_oriented_cutout",
    "host_allowed",
    "orient_cutout",
    "orient_pixels",
    "padded_fov_arcmin",
    "provider_from_settings",
]

log = logging.getLogger(__name__)

#: URL templates; placeholders: ra, dec (deg), fov (arcmin), fov_deg, fov_arcsec,
#: scale (arcsec/pixel), size (pixels), name (URL-quoted, may be empty).
CUTOUT_PRESETS: dict[str, str] = {
    "sdss": "https://skyserver.sdss.org/dr18/SkyServerWS/ImgCutout/getjpeg"
    "?ra={ra}&dec={dec}&scale={scale}&width={size}&height={size}",
    "legacy": "https://www.legacysurvey.org/viewer/cutout.jpg"
    "?ra={ra}&dec={dec}&layer=ls-dr10&pixscale={scale}&size={size}",
}

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".fits", ".fit", ".fts")
_RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))
_FITS_TYPES = ("application/fits", "image/fits", "application/octet-stream")
_MAX_BACKOFF_S = 30.0


def host_allowed(host: str | None, port: int | None, allowed_hosts: Iterable[str]) -> bool:
    """Whether ``host[:port]`` is on the allowlist.

    Entries are host names or IP addresses (``skyserver.sdss.org``), optionally with a
    port (``127.0.0.1:8080``, then only that port), or ``*.example.org`` for any
    subdomain of ``example.org``. Comparison ignores case and a trailing dot.
    """
    if not host:
        return False
    host = host.lower().rstrip(".")
    for entry in allowed_hosts:
        entry = entry.strip().lower().rstrip(".")
        entry_port: int | None = None
        if entry.count(":") == 1:  # host:port (IPv6 literals are not supported here)
            entry, port_text = entry.split(":")
            entry_port = int(port_text)
        if entry_port is not None and entry_port != port:
            continue
        if entry.startswith("*."):
            if host.endswith(entry[1:]):
                return True
        elif host == entry:
            return True
    return False


def check_address(address: str, *, allow_private: bool) -> None:
    """Refuse an address no outbound fetch may reach.

    Raises
    ------
    HostNotAllowed
        A private, loopback, link-local, multicast, reserved or unspecified address
        (IPv4-mapped IPv6 included), unless ``allow_private``.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if allow_private:
        return
    if (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    ):
        raise HostNotAllowed(
            f"The address {ip} is private, loopback or link-local; skyserve does not fetch "
            "from such addresses (SKYSERVE_CUTOUT_ALLOW_PRIVATE_ADDRESSES allows them).",
            address=str(ip),
        )


class PinnedTransport(httpx.BaseTransport):
    """An httpx transport that resolves each host once, checks it, and connects to that address.

    The request keeps its ``Host`` header and, for https, sends and verifies the
    original name (SNI), so virtual hosts and certificates work as usual.
    """

    def __init__(self, *, allow_private: bool = False, **transport_options: Any) -> None:
        self.allow_private = allow_private
        self._inner = httpx.HTTPTransport(**transport_options)

    def _resolve(self, host: str, port: int) -> str:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpx.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise httpx.ConnectError(f"{host} resolves to no address")
        for address in addresses:  # every one: a mixed answer is refused, not raced
            check_address(address, allow_private=self.allow_private)
        return addresses[0]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        host = url.host
        port = url.port or (443 if url.scheme == "https" else 80)
        address = self._resolve(host, port)
        if address != host:
            request.url = url.copy_with(host=address)
            if url.scheme == "https":
                request.extensions = {**request.extensions, "sni_hostname": host}
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


class CutoutProvider(ABC):
    """Gives the image bytes of a patch of sky."""

    @abstractmethod
    def fetch(
        self,
        ra_deg: float,
        dec_deg: float,
        fov_arcmin: float,
        *,
        name: str | None = None,
        aliases: Sequence[str] = (),
    ) -> bytes:
        """Image bytes (PNG/JPEG/FITS) of the square field centred on a position.

        Parameters
        ----------
        ra_deg, dec_deg
            ICRS centre in degrees.
        fov_arcmin
            Side of the field.
        name, aliases
            The object's name and other names, for providers that look files up by name.

        Raises
        ------
        CutoutUnavailable
            The provider could not deliver an image; ``detail`` says why.
        """

    def forget(
        self, ra_deg: float, dec_deg: float, fov_arcmin: float, *, name: str | None = None
    ) -> None:
        """Drop what a cache holds for this field: its pixels turned out not to decode."""

    def close(self) -> None:
        """Release connections; the provider must not be used afterwards."""

    def __enter__(self) -> CutoutProvider:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _TransientError(Exception):
    """A failure worth retrying (timeout, connection error, 5xx/429)."""


class HttpCutoutProvider(CutoutProvider):
    """A cutout web service reached over HTTP(S).

    Parameters
    ----------
    url_template
        A URL with ``{ra}``, ``{dec}``, ``{scale}``, ``{size}``, … placeholders, or a
        preset name from :data:`CUTOUT_PRESETS` (``"sdss"``, ``"legacy"``).
    allowed_hosts
        Hosts the provider may contact (see :func:`host_allowed`); defaults to the
        template's own host. Redirects are followed only within this list.
    timeout_s
        Connect/read/write timeout of each request; a whole download is also cut
        off after four times this.
    retries
        Extra attempts after a timeout, connection error, 5xx or 429; back-off
        ``backoff_s · 2^attempt`` between attempts (capped at 30 s).
    cache_dir
        Folder for the on-disk cache (``<sha256 of URL>.img``); ``None`` disables it.
    pixels
        Side of the requested cutout in pixels; ``scale`` = field / pixels.
    max_bytes
        Largest response body accepted.
    max_redirects
        Longest redirect chain followed (each hop checked against the allowlist).
    max_pixels
        Decompression-bomb guard used when checking that the body decodes.
    allow_private_addresses
        Let connections reach private, loopback and link-local addresses (tests with
        local servers); off, such addresses are refused after resolution.
    """

    def __init__(
        self,
        url_template: str,
        allowed_hosts: Iterable[str] | None = None,
        *,
        timeout_s: float = 10.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        cache_dir: Path | str | None = None,
        pixels: int = 256,
        max_bytes: int = 8 * 1024 * 1024,
        max_redirects: int = 3,
        max_pixels: int = 50_000_000,
        allow_private_addresses: bool = False,
    ) -> None:
        template = CUTOUT_PRESETS.get(url_template, url_template)
        parts = urlsplit(template)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"The cutout URL template {template!r} is not an http(s) URL.")
        if timeout_s <= 0 or retries < 0 or backoff_s < 0 or pixels <= 0 or max_bytes <= 0:
            raise ValueError("timeout_s, pixels and max_bytes must be > 0; retries, backoff_s ≥ 0.")
        self.url_template = template
        self.allowed_hosts = (
            tuple(allowed_hosts) if allowed_hosts is not None else (parts.hostname,)
        )
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.pixels = pixels
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.max_pixels = max_pixels
        self.url_for(0.0, 0.0, 1.0)  # a template with unknown placeholders fails now, not later
        if not host_allowed(parts.hostname, parts.port, self.allowed_hosts):
            raise ValueError(
                f"The cutout host {parts.hostname!r} is not in the allowlist {self.allowed_hosts}."
            )
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,  # redirects are followed by hand, within the allowlist
            headers={"User-Agent": "skyserve-cutouts/0.1"},
            transport=PinnedTransport(allow_private=allow_private_addresses),
            trust_env=False,  # a proxy would connect for us, past the address check
        )

    @classmethod
    def from_preset(cls, preset: str, **kwargs: Any) -> HttpCutoutProvider:
        """Build from ``"sdss"`` or ``"legacy"``; keyword arguments as for the constructor."""
        if preset not in CUTOUT_PRESETS:
            known = ", ".join(sorted(CUTOUT_PRESETS))
            raise ValueError(f"Unknown cutout preset {preset!r}; choose from {known}.")
        return cls(CUTOUT_PRESETS[preset], **kwargs)

    def url_for(
        self, ra_deg: float, dec_deg: float, fov_arcmin: float, *, name: str | None = None
    ) -> str:
        """The URL the template gives for this field.

        Raises
        ------
        ValueError
            The template names a placeholder that does not exist.
        """
        scale = fov_arcmin * 60.0 / self.pixels
        values = {
            "ra": round(ra_deg, 6),
            "dec": round(dec_deg, 6),
            "fov": round(fov_arcmin, 4),
            "fov_arcmin": round(fov_arcmin, 4),
            "fov_deg": round(fov_arcmin / 60.0, 6),
            "fov_arcsec": round(fov_arcmin * 60.0, 3),
            "scale": float(f"{scale:.6g}"),
            "size": self.pixels,
            "width": self.pixels,
            "height": self.pixels,
            "name": quote(name or "", safe=""),
        }
        try:
            return self.url_template.format(**values)
        except (KeyError, IndexError) as exc:
            raise ValueError(
                f"The cutout URL template uses an unknown placeholder {exc}; "
                f"known: {', '.join(sorted(values))}."
            ) from exc

    # ------------------------------------------------------------------ public fetches
    def fetch(
        self,
        ra_deg: float,
        dec_deg: float,
        fov_arcmin: float,
        *,
        name: str | None = None,
        aliases: Sequence[str] = (),
    ) -> bytes:
        """Fetch (or read from the cache) the cutout of a field; see :class:`CutoutProvider`.

        Raises
        ------
        CutoutUnavailable
            Timeouts or failures after the retries, a redirect off the allowlist, an
            error status, an oversized or non-image body. ``extra`` holds ``host``.
        """
        if not fov_arcmin > 0:
            raise CutoutUnavailable(f"The field of view must be positive, got {fov_arcmin!r}.")
        url = self.url_for(ra_deg, dec_deg, fov_arcmin, name=name)
        cached = self._cache_read(url)
        if cached is not None:
            return cached
        try:
            data = self._download(url)
        except (HostNotAllowed, ImageTooLarge, InvalidImage, UnsupportedMediaType) as exc:
            # For a configured service any of these means "the service did not deliver".
            raise CutoutUnavailable(exc.detail, **exc.extra) from exc
        self._cache_write(url, data)
        return data

    def fetch_url(self, url: str) -> bytes:
        """Fetch a user-supplied image URL under the same allowlist, limits and checks.

        Not cached: the content behind a user's URL may change.

        Raises
        ------
        HostNotAllowed
            The URL, or a redirect it leads to, is off the allowlist; no request is
            made to such a host.
        CutoutUnavailable
            Timeouts, connection failures, error statuses.
        ImageTooLarge, UnsupportedMediaType, InvalidImage
            The body is too big, not an image, or does not decode.
        """
        return self._download(url)

    def forget(
        self, ra_deg: float, dec_deg: float, fov_arcmin: float, *, name: str | None = None
    ) -> None:
        """Remove the cached file of this field, if any."""
        path = self._cache_path(self.url_for(ra_deg, dec_deg, fov_arcmin, name=name))
        if path is not None:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ machinery
    def _check_url(self, url: str, *, redirected_from: str | None = None) -> httpx.URL:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise HostNotAllowed(f"{url!r} is not a valid URL.", url=url) from exc
        if parsed.scheme not in ("http", "https"):
            raise HostNotAllowed(
                f"Only http and https URLs are fetched, not {parsed.scheme or 'no scheme'!r}.",
                url=url,
            )
        if parsed.userinfo:
            raise HostNotAllowed("URLs with a user name or password are not fetched.", url=url)
        if not host_allowed(parsed.host, parsed.port, self.allowed_hosts):
            how = f" (a redirect from {redirected_from})" if redirected_from else ""
            raise HostNotAllowed(
                f"{parsed.host or url!r}{how} is not on the image-host allowlist "
                f"({', '.join(self.allowed_hosts)}).",
                host=parsed.host,
                allowed_hosts=list(self.allowed_hosts),
            )
        return parsed

    def _download(self, url: str) -> bytes:
        first = self._check_url(url)  # before any request
        host = first.host
        last: _TransientError | None = None
        attempts = self.retries + 1
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), _MAX_BACKOFF_S))
            try:
                return self._attempt(first)
            except _TransientError as exc:
                last = exc
                log.info("cutout attempt %d/%d on %s failed: %s", attempt + 1, attempts, host, exc)
        raise CutoutUnavailable(
            f"{host} did not deliver an image: {last} (tried {attempts} time"
            f"{'s' if attempts > 1 else ''}).",
            host=host,
            attempts=attempts,
        )

    def _attempt(self, url: httpx.URL) -> bytes:
        deadline = time.monotonic() + 4 * self.timeout_s
        for _hop in range(self.max_redirects + 1):
            try:
                with self._client.stream("GET", url) as response:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        url = self._check_url(str(url.join(location)), redirected_from=url.host)
                        continue
                    return self._read(response, deadline)
            except httpx.TimeoutException as exc:
                raise _TransientError(f"no answer within {self.timeout_s:g} s") from exc
            except httpx.TransportError as exc:
                raise _TransientError(f"connection failed ({type(exc).__name__}: {exc})") from exc
        raise CutoutUnavailable(
            f"{url.host} redirected more than {self.max_redirects} times.", host=url.host
        )

    def _read(self, response: httpx.Response, deadline: float) -> bytes:
        host = response.url.host
        status = response.status_code
        if status in _RETRY_STATUSES:
            raise _TransientError(f"HTTP {status} {response.reason_phrase}")
        if not response.is_success:
            raise CutoutUnavailable(
                f"{host} answered HTTP {status} {response.reason_phrase}.", host=host, status=status
            )
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise ImageTooLarge(
                f"{host} offers {int(declared):,} bytes; the limit is {self.max_bytes:,}.",
                host=host,
            )
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                raise ImageTooLarge(
                    f"{host} sent more than the {self.max_bytes:,}-byte limit.", host=host
                )
            if time.monotonic() > deadline:
                raise _TransientError(f"the download took longer than {4 * self.timeout_s:g} s")
            chunks.append(chunk)
        data = b"".join(chunks)
        self._check_image(data, response.headers.get("content-type", ""), host)
        return data

    def _check_image(self, data: bytes, content_type: str, host: str) -> None:
        kind = content_type.split(";")[0].strip().lower()
        if kind and not (kind.startswith("image/") or kind in _FITS_TYPES):
            # Never echo the body: it may be a private page the client should not read.
            raise UnsupportedMediaType(
                f"{host} answered with {kind}, not an image.",
                host=host,
                content_type=kind,
            )
        try:
            # The header only (format, size, bomb guard): the pixels are decoded once, by
            # whoever uses them. A body whose pixels turn out broken is then forgotten
            # (:meth:`forget`), so the cache does not keep serving it.
            inspect_image(data, max_pixels=self.max_pixels)
        except SkyserveError as exc:
            detail = f"The image from {host} cannot be used: {exc.detail}"
            raise type(exc)(detail, host=host) from exc

    def _cache_path(self, url: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()}.img"

    def _cache_read(self, url: str) -> bytes | None:
        path = self._cache_path(url)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def _cache_write(self, url: str, data: bytes) -> None:
        path = self._cache_path(url)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename on the same volume, so a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".img")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except OSError:
            log.warning("could not write cutout cache file %s", path, exc_info=True)
            Path(tmp).unlink(missing_ok=True)


class LocalArchiveProvider(CutoutProvider):
    """Cutouts from a folder of PNG/JPEG/FITS files.

    Files are found by object name, normalised (``NGC0224.png``, ``ngc224.jpg`` and
    ``M31.fits`` all serve NGC 224 when its aliases are passed), or by position
    through an optional ``index.csv`` with columns ``file,ra,dec`` (degrees): the
    nearest entry within half the requested field, i.e. whose centre lies in it.

    The folder is scanned at construction; call :meth:`refresh` after adding files.
    """

    def __init__(
        self,
        folder: Path | str,
        *,
        index_name: str = "index.csv",
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"The cutout archive {self.folder} is not a folder.")
        self.index_name = index_name
        self.max_bytes = max_bytes
        self.refresh()

    def refresh(self) -> None:
        """Rescan the folder and re-read the index."""
        by_name: dict[str, Path] = {}
        for path in sorted(self.folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in _IMAGE_SUFFIXES:
                by_name.setdefault(normalise_identifier(path.stem), path)
        self._by_name = by_name
        self._positions: list[tuple[Path, float, float]] = []
        index = self.folder / self.index_name
        if index.is_file():
            self._positions = self._read_index(index)

    def _read_index(self, index: Path) -> list[tuple[Path, float, float]]:
        root = self.folder.resolve()
        entries: list[tuple[Path, float, float]] = []
        with index.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"file", "ra", "dec"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{index} lacks the column(s) {', '.join(sorted(missing))}.")
            for line, row in enumerate(reader, start=2):
                try:
                    ra, dec = float(row["ra"]), float(row["dec"])
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{index} line {line}: ra/dec are not numbers.") from exc
                path = (self.folder / row["file"]).resolve()
                if not path.is_relative_to(root):  # no ../ escapes from the archive
                    raise ValueError(
                        f"{index} line {line}: {row['file']!r} is outside the archive."
                    )
                entries.append((path, ra, dec))
        return entries

    def fetch(
        self,
        ra_deg: float,
        dec_deg: float,
        fov_arcmin: float,
        *,
        name: str | None = None,
        aliases: Sequence[str] = (),
    ) -> bytes:
        """The file named after the object, else the nearest indexed file within the field.

        Raises
        ------
        CutoutUnavailable
            No file matches by name or position, or the file is unreadable or too big.
        """
        tried = [normalise_identifier(n) for n in (name, *aliases) if n]
        for key in tried:
            path = self._by_name.get(key)
            if path is not None:
                return self._read(path)
        found = self.nearest(ra_deg, dec_deg, max_arcmin=fov_arcmin / 2.0)
        if found is not None:
            return self._read(found[0])
        names = f" named {', '.join(tried)}" if tried else ""
        raise CutoutUnavailable(
            f"The local archive {self.folder} has no file{names}, and no {self.index_name} "
            f"entry within {fov_arcmin / 2.0:.2f}′ of RA {ra_deg:.5f}, Dec {dec_deg:.5f}.",
            host="local-archive",
        )

    def nearest(
        self, ra_deg: float, dec_deg: float, *, max_arcmin: float
    ) -> tuple[Path, float] | None:
        """The indexed file closest to a position within ``max_arcmin``, with its separation."""
        best: tuple[Path, float] | None = None
        for path, ra, dec in self._positions:
            sep = _separation_arcmin(ra_deg, dec_deg, ra, dec)
            if sep <= max_arcmin and (best is None or sep < best[1]):
                best = (path, sep)
        return best

    def _read(self, path: Path) -> bytes:
        try:
            size = path.stat().st_size
            if size > self.max_bytes:
                raise CutoutUnavailable(
                    f"{path.name} is {size:,} bytes; the limit is {self.max_bytes:,}.",
                    host="local-archive",
                )
            return path.read_bytes()
        except OSError as exc:
            raise CutoutUnavailable(
                f"{path.name} in the local archive cannot be read: {exc}", host="local-archive"
            ) from exc


def _separation_arcmin(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    ra1, dec1, ra2, dec2 = map(math.radians, (ra1, dec1, ra2, dec2))
    hav = (
        math.sin((dec2 - dec1) / 2) ** 2
        + math.cos(dec1) * math.cos(dec2) * math.sin((ra2 - ra1) / 2) ** 2
    )
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(hav)))) * 60.0


ProviderKind = Literal["sdss", "legacy", "http", "local", "none"]


def provider_from_settings(settings: WorkerSettings) -> CutoutProvider | None:
    """Build the provider the ``cutout_*`` settings describe (``None`` for kind ``none``).

    Raises
    ------
    ValueError
        Inconsistent settings (e.g. ``http`` without a template, ``local`` without a folder).
    """
    kind: ProviderKind = settings.cutout_provider
    if kind == "none":
        return None
    if kind == "local":
        if settings.cutout_archive_dir is None:
            raise ValueError("SKYSERVE_CUTOUT_PROVIDER=local needs SKYSERVE_CUTOUT_ARCHIVE_DIR.")
        return LocalArchiveProvider(settings.cutout_archive_dir)
    template = settings.cutout_url_template or CUTOUT_PRESETS.get(kind)
    if template is None:
        raise ValueError("SKYSERVE_CUTOUT_PROVIDER=http needs SKYSERVE_CUTOUT_URL_TEMPLATE.")
    return HttpCutoutProvider(
        template,
        settings.cutout_allowed_hosts,
        timeout_s=settings.cutout_timeout_seconds,
        retries=settings.cutout_retries,
        backoff_s=settings.cutout_backoff_seconds,
        cache_dir=settings.cutout_cache_dir,
        pixels=settings.cutout_pixels,
        max_bytes=settings.cutout_max_bytes,
        max_pixels=settings.max_image_pixels,
        allow_private_addresses=settings.cutout_allow_private_addresses,
    )


def fetch_oriented_cutout(
    provider: CutoutProvider,
    ra_deg: float,
    dec_deg: float,
    fov_arcmin: float,
    *,
    pa_deg: float | None = None,
    name: str | None = None,
    aliases: Sequence[str] = (),
    pixels: int | None = None,
    max_pixels: int = 50_000_000,
) -> np.ndarray:
    """Fetch a √2-padded field, rotate the major axis horizontal, crop to ``fov_arcmin``.

    The one call a worker needs for a catalog job: ``fov_arcmin`` from
    :func:`shared.resolver.field_of_view_arcmin`, ``pa_deg`` from the catalog.
    Without a PA nothing is rotated and the unpadded field is fetched. The fetched
    bytes are decoded here, once; the models take the returned pixels as they are
    (:class:`shared.preprocessing.DecodedImage`), with no PNG in between.

    Returns
    -------
    numpy.ndarray
        ``(side, side, 3)`` uint8: what the model will see
        (:func:`services.worker.orientation.encode_png` makes the page's PNG of it).

    Raises
    ------
    CutoutUnavailable
        From the provider, or its image does not decode (then the provider's cache
        forgets it).
    """
    fetch_fov = padded_fov_arcmin(fov_arcmin) if pa_deg is not None else fov_arcmin
    raw = provider.fetch(ra_deg, dec_deg, fetch_fov, name=name, aliases=aliases)
    try:
        return orient_pixels(
            raw, pa_deg, fov_arcmin, image_fov_arcmin=fetch_fov, pixels=pixels,
            max_pixels=max_pixels,
        )
    except (InvalidImage, UnsupportedMediaType, ImageTooLarge) as exc:
        provider.forget(ra_deg, dec_deg, fetch_fov, name=name)
        raise CutoutUnavailable(f"The cutout cannot be decoded: {exc.detail}") from exc
