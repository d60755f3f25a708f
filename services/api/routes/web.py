"""The web page: ``/`` and its static assets, all in the repository, no CDN, no build step.

The page is plain HTML, CSS and JavaScript modules that call the same public API with
URLs relative to the page. Behind a proxy under a sub-path (``SKYSERVE_ROOT_PATH``, or
the ASGI server's root path) the page gets a ``<base>`` pointing there, so its assets,
API calls and shareable ``#/jobs/<id>`` links all resolve under that sub-path.
"""

from __future__ import annotations

import html
from functools import lru_cache
from importlib import resources
from importlib.resources.abc import Traversable

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

__all__ = ["router", "MEDIA_TYPES"]

router = APIRouter(include_in_schema=False)

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


def _static() -> Traversable:
    return resources.files("services.api") / "static"


@lru_cache
def _index_template() -> str:
    return (_static() / "index.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    """The page; a ``<base href>`` names the sub-path when the app is served under one."""
    root = str(request.scope.get("root_path") or "").rstrip("/")
    base = f'<base href="{html.escape(root, quote=True)}/">' if root else ""
    page = _index_template().replace("<!--base-->", base, 1)
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


@router.get("/static/{path:path}")
def static_file(path: str) -> Response:
    """A file of the page (CSS, JavaScript modules, icons) from ``services/api/static``."""
    parts = path.split("/")
    suffix = "." + parts[-1].rsplit(".", 1)[-1] if "." in parts[-1] else ""
    # Names only: no '..', no hidden files, no other file types than the page's own.
    if (
        suffix not in MEDIA_TYPES
        or any(not p or p.startswith(".") for p in parts)
        or parts[0] == "docs"
    ):
        raise HTTPException(404, f"There is no file {path!r} on this page.")
    entry = _static().joinpath(*parts)
    if not entry.is_file():
        raise HTTPException(404, f"There is no file {path!r} on this page.")
    return Response(
        entry.read_bytes(), media_type=MEDIA_TYPES[suffix], headers={"Cache-Control": "no-cache"}
    )
