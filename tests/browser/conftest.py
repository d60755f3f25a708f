"""Browser tests: Playwright driving Debian's Chromium against the running system.

The system is real: a Redis server, a Celery worker process on the committed default
models, the API served over HTTP by uvicorn, and a local HTTP server standing in for the
survey cutout service. The browser is ``/usr/bin/chromium`` from Debian (``make
system-deps`` installs it), never a browser build Playwright downloads. Without it the
tests skip, except under ``CI=true`` where a missing browser fails the run.

Every test leaves a full-page screenshot in ``test-output/browser/`` (or under
``$SKYSERVE_TEST_OUTPUT``), named after the test.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.settings import REPO_ROOT
from tests.helpers.cutout_server import CutoutStandIn, running_stand_in
from tests.helpers.live_server import LiveServer, serve
from tests.helpers.processes import running_worker, worker_env

DEFAULT_MODELS = REPO_ROOT / "models"
CHROMIUM = os.environ.get("SKYSERVE_CHROMIUM", "/usr/bin/chromium")
#: Flags for a sandboxed, offline machine: no GPU, no QUIC, no background traffic.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def output_dir() -> Path:
    """Where screenshots go: ``$SKYSERVE_TEST_OUTPUT/browser`` or ``test-output/browser``."""
    root = Path(os.environ.get("SKYSERVE_TEST_OUTPUT", REPO_ROOT / "test-output"))
    folder = root / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _require_chromium() -> str:
    if Path(CHROMIUM).is_file() or shutil.which(CHROMIUM):
        return CHROMIUM
    reason = (
        f"Debian's chromium is not installed at {CHROMIUM} (make system-deps installs it; "
        "Playwright never downloads a browser here)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per module.

    Not per session: Playwright's sync API runs an event loop in the main thread while
    it is open, and other tests (the async client's) need ``asyncio.run`` afterwards.
    """
    executable = _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass(frozen=True)
class RunningSystem:
    """The live system the page talks to."""

    url: str
    settings: ApiSettings
    stand_in: CutoutStandIn
    worker_log: Path


@pytest.fixture(scope="module")
def system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    """Redis, a worker on the default models (cutouts from the stand-in) and the API."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    log = tmp_path_factory.mktemp("browser") / "worker.log"
    with running_stand_in() as stand_in:
        env = worker_env(
            redis_url=redis_url,
            key_prefix=prefix,
            models_dir=DEFAULT_MODELS,
            **stand_in.worker_env(),
            cutout_timeout_seconds=2.0,
            cutout_retries=0,
            cutout_pixels=128,
        )
        settings = ApiSettings(
            redis_url=redis_url,
            key_prefix=prefix,
            celery_queue=prefix,
            models_dir=DEFAULT_MODELS,
            max_wait_seconds=10.0,
            batch_chunk_rows=2,
        )
        try:
            with (
                running_worker(env, log_file=log, served="inclination", timeout_s=120),
                serve(create_app(settings)) as live,
            ):
                yield RunningSystem(live.url, settings, stand_in, log)
        finally:
            client = redis.Redis.from_url(redis_url)
            keys = list(client.scan_iter(match=f"{prefix}*", count=500))
            keys += list(client.scan_iter(match=f"_kombu.binding.{prefix}*", count=500))
            if keys:
                client.delete(*keys)
            client.close()


class PrefixProxy:
    """A reverse proxy in miniature: serves the app only under ``prefix`` (404 elsewhere)
    and tells it so through the ASGI ``root_path``, as ``uvicorn --root-path`` does."""

    def __init__(self, app: Any, prefix: str) -> None:
        self.app, self.prefix = app, prefix.rstrip("/")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            path = scope["path"]
            if path != self.prefix and not path.startswith(self.prefix + "/"):
                body = f"only {self.prefix}/ is proxied, not {path}".encode()
                await send({"type": "http.response.start", "status": 404,
                            "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": body})
                return
            scope = {**scope, "root_path": self.prefix}
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def proxied(system: RunningSystem) -> Iterator[LiveServer]:
    """The same API behind a proxy at ``/skyserve/``."""
    with serve(PrefixProxy(create_app(system.settings), "/skyserve")) as live:  # type: ignore[arg-type]
        yield live


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh desktop-sized page; its screenshot is saved when the test ends."""
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    new_page = context.new_page()
    new_page.set_default_timeout(30_000)
    errors: list[str] = []
    new_page.on("pageerror", lambda exc: errors.append(str(exc)))
    new_page.errors = errors  # type: ignore[attr-defined]
    try:
        yield new_page
    finally:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
        try:
            new_page.screenshot(path=str(output_dir() / f"{name}.png"), full_page=True)
        finally:
            context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
