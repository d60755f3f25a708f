"""The page and the API docs are served from the repository, with page-relative URLs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.settings import ApiSettings

STATIC = Path(__file__).resolve().parents[2] / "services" / "api" / "static"
ASSETS = sorted(p for p in STATIC.rglob("*") if p.is_file())


def test_the_page_and_every_asset_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<base" not in page.text  # no sub-path: URLs resolve against the page itself
    media = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".html": "text/html"}
    for asset in ASSETS:
        resp = client.get(f"/static/{asset.relative_to(STATIC).as_posix()}")
        assert resp.status_code == 200, asset
        assert resp.headers["content-type"].startswith(media[asset.suffix]), asset


@pytest.mark.parametrize("path", ["../app.py", "js/../../app.py", ".hidden.js", "docs/x.js", "nope.js", "app.py"])
def test_only_the_pages_own_files_are_served(client: TestClient, path: str) -> None:
    assert client.get(f"/static/{path}").status_code == 404


def test_no_asset_names_an_outside_host_or_an_absolute_path() -> None:
    """Everything is in the repo (no CDN), and every URL is relative (sub-path proof)."""
    for asset in ASSETS:
        if asset.suffix not in (".html", ".js", ".css"):
            continue
        text = asset.read_text(encoding="utf-8")
        assert not re.search(r"https?://", text), f"{asset.name} names an outside URL"
        for url in re.findall(r"""(?:src|href)=["']([^"']+)""", text):
            assert not url.startswith("/"), f"{asset.name}: absolute URL {url}"
        for call in re.findall(r"""(?:json|request)\(\s*[`"']([^`"']+)""", text):
            assert not call.startswith("/"), f"{asset.name}: absolute API path {call}"


def test_every_module_import_resolves() -> None:
    for module in (STATIC / "js").glob("*.js"):
        for target in re.findall(r"""from\s+["'](\./[^"']+)["']""", module.read_text()):
            assert (module.parent / target).is_file(), f"{module.name} imports missing {target}"


def test_under_a_root_path_the_page_gets_a_base(settings: ApiSettings) -> None:
    app = create_app(settings.model_copy(update={"root_path": "/skyserve"}))
    with TestClient(app) as client:
        assert '<base href="/skyserve/">' in client.get("/").text
        assert '<base href="/skyserve/">' in client.get("/skyserve/").text
        assert client.get("/skyserve/static/js/main.js").status_code == 200


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_use_local_assets_only(client: TestClient, page: str) -> None:
    html = client.get(page)
    assert html.status_code == 200
    assert not re.search(r"https?://", html.text), "the docs page loads something from outside"
    for url in re.findall(r"""(?:src|href)=["']([^"']+)""", html.text):
        assert not url.startswith(("/", "http")), url
        assert client.get(f"/{url}").status_code == 200, url
    assert "openapi.json" in html.text


def test_redoc_bundle_fetches_nothing_from_outside(client: TestClient) -> None:
    bundle = client.get("/static/docs/redoc.standalone.js").text
    assert "cdn.redoc.ly" not in bundle and "static/favicon.svg" in bundle
