"""The real API served over real HTTP by uvicorn in a background thread, for any test tier.

``serve(app)`` is a context manager yielding a ``LiveServer`` with its ``url``. The
socket is bound before the thread starts (port 0: the OS picks a free one), so there
is no window in which another process can take the port.

A tier that has a ``settings`` fixture (an ``ApiSettings``) gets a running API with::

    from tests.helpers.live_server import live_api  # noqa: F401  (registers the fixture)
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import uvicorn
from fastapi import FastAPI

from services.api.app import create_app
from services.api.settings import ApiSettings

__all__ = ["LiveServer", "serve", "live_api", "unused_url"]


@dataclass(frozen=True)
class LiveServer:
    """A running server: its base URL, the app it serves and the uvicorn server."""

    url: str
    app: FastAPI
    server: uvicorn.Server


@contextmanager
def serve(
    app: FastAPI, *, host: str = "127.0.0.1", start_timeout: float = 20.0
) -> Iterator[LiveServer]:
    """Serve ``app`` (lifespan included) until the block ends.

    Raises
    ------
    RuntimeError
        If uvicorn does not start within ``start_timeout`` seconds (its error, e.g. a
        failing lifespan, is logged by uvicorn).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        # Long polls in flight must not hold a test's teardown for long.
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn:{port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5)
            sock.close()
            raise RuntimeError(f"uvicorn did not start on {host}:{port}; see its log above.")
        time.sleep(0.01)
    try:
        yield LiveServer(url=f"http://{host}:{port}", app=app, server=server)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def unused_url(host: str = "127.0.0.1") -> str:
    """A URL where nothing listens (a port the OS just gave out and took back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return f"http://{host}:{port}"


@pytest.fixture
def live_api(settings: ApiSettings) -> Iterator[LiveServer]:
    """The API built by ``create_app(settings)``, served over HTTP for one test."""
    with serve(create_app(settings)) as live:
        yield live
