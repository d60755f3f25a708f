"""The drop-an-image web page: a static page that talks to the same public API."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def index() -> HTMLResponse:
    page = (resources.files("services.api") / "static" / "index.html").read_text()
    return HTMLResponse(page)
