"""A real HTTP server on 127.0.0.1 that stands in for a survey cutout service.

It serves real PNGs (a noisy ellipse, the side the ``size`` parameter asks for) and
records every request, so tests can check what the worker asked for. Also used by
the benchmarks. Routes:

- ``/cutout?ra=…&dec=…&scale=…&size=…`` — a cutout; sleeps ``delay_s`` first, or
  ``slow_s`` when ``ra`` (as sent) is in ``slow_ra``;
- ``/images/<anything>.png`` — an image for ``image_url`` rows;
- ``/text/<anything>`` — ``200 text/html``: a body that is not an image;
- ``/status/<code>`` — that HTTP status, empty body;
- anything else — 404.

``peak_in_flight`` is the most requests it was answering at once (see :meth:`clear`).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tests.helpers.images import ellipse, encode

__all__ = ["CutoutStandIn", "Request", "cutout_png", "running_stand_in"]


@dataclass(frozen=True)
class Request:
    """One request the stand-in received."""

    path: str
    query: dict[str, str]
    time: float


@lru_cache(maxsize=256)
def cutout_png(size: int, seed: int = 0) -> bytes:
    """The PNG the stand-in serves for a cutout of ``size`` pixels (deterministic)."""
    return encode(ellipse(size, axis_ratio=0.4, seed=seed))


class CutoutStandIn:
    """The server and what it saw; knobs (``delay_s``, ``slow_ra``, ``slow_s``) may change live."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.requests: list[Request] = []
        self.delay_s = 0.0
        self.slow_ra: set[str] = set()
        self.slow_s = 5.0
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real service offers

            def do_GET(self) -> None:
                stand_in._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.host, self.port = self.server.server_address[:2]
        self._thread = threading.Thread(
            target=self.server.serve_forever, name=f"cutout-stand-in:{self.port}", daemon=True
        )

    # -- addresses ------------------------------------------------------------------------
    @property
    def netloc(self) -> str:
        """``host:port``, as the allowlist takes it."""
        return f"{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.netloc}"

    @property
    def template(self) -> str:
        """A cutout URL template for ``SKYSERVE_CUTOUT_URL_TEMPLATE``."""
        return self.base_url + "/cutout?ra={ra}&dec={dec}&scale={scale}&size={size}"

    def worker_env(self, **extra: str | float) -> dict[str, str | float]:
        """Keyword arguments for ``tests.helpers.processes.worker_env`` pointing here."""
        return {
            "cutout_provider": "http",
            "cutout_url_template": self.template,
            "cutout_allowed_hosts": self.netloc,
            # The stand-in listens on loopback, which deployments refuse.
            "cutout_allow_private_addresses": "true",
            **extra,
        }

    # -- what it saw ----------------------------------------------------------------------
    def cutout_requests(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == "/cutout"]

    def requests_for(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def clear(self) -> None:
        """Forget the requests seen so far and the in-flight peak."""
        with self._lock:
            self.requests.clear()
            self.peak_in_flight = self.in_flight

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> CutoutStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    # -- serving --------------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self._lock:
            self.requests.append(Request(parts.path, query, time.time()))
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if parts.path == "/cutout":
                self._cutout(handler, query)
            elif parts.path.startswith("/images/"):
                seed = int(hashlib.sha256(parts.path.encode()).hexdigest()[:6], 16) % 1000
                self._send(handler, 200, "image/png", cutout_png(64, seed))
            elif parts.path.startswith("/text/"):
                self._send(handler, 200, "text/html", b"<html><body>not an image</body></html>")
            elif parts.path.startswith("/status/"):
                self._send(handler, int(parts.path.rsplit("/", 1)[1]), "text/plain", b"")
            else:
                self._send(handler, 404, "text/plain", b"no such path")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing to answer
        finally:
            with self._lock:
                self.in_flight -= 1

    def _cutout(self, handler: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        try:
            size = int(query.get("size", "64"))
            float(query["ra"]), float(query["dec"])
        except (KeyError, ValueError):
            self._send(handler, 400, "text/plain", b"ra, dec and size are required")
            return
        pause = self.slow_s if query["ra"] in self.slow_ra else self.delay_s
        if pause:
            time.sleep(pause)
        self._send(handler, 200, "image/png", cutout_png(min(size, 2048)))

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, ctype: str, body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


@contextmanager
def running_stand_in() -> Iterator[CutoutStandIn]:
    """A started stand-in, stopped when the block ends."""
    stand_in = CutoutStandIn().start()
    try:
        yield stand_in
    finally:
        stand_in.stop()
