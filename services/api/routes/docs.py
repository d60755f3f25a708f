"""``/docs`` (Swagger UI) and ``/redoc`` from local assets: the API docs work offline.

The JavaScript and CSS come from the ``fastapi-offline`` wheel (Swagger UI: Apache-2.0,
ReDoc: MIT, the package itself: MIT; the licences ship with it), served by plain routes
rather than a static mount so they resolve under a proxy sub-path whether or not the
proxy strips it. Every URL in the two pages is relative to the page.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

__all__ = ["router", "DOCS_ASSETS"]

router = APIRouter(include_in_schema=False)

#: Asset name → media type; nothing else is served from the package's folder.
DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
_ASSET_DIR = "static/docs"


@router.get("/docs", response_class=HTMLResponse)
def swagger_ui() -> HTMLResponse:
    """Swagger UI on ``openapi.json``, without the online validator badge."""
    return get_swagger_ui_html(
        openapi_url="openapi.json",
        title="skyserve — API (Swagger UI)",
        oauth2_redirect_url="docs/oauth2-redirect",
        swagger_js_url=f"{_ASSET_DIR}/swagger-ui-bundle.js",
        swagger_css_url=f"{_ASSET_DIR}/swagger-ui.css",
        swagger_favicon_url=f"{_ASSET_DIR}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get("/docs/oauth2-redirect", response_class=HTMLResponse)
def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc", response_class=HTMLResponse)
def redoc() -> HTMLResponse:
    """ReDoc on ``openapi.json``, without Google Fonts."""
    return get_redoc_html(
        openapi_url="openapi.json",
        title="skyserve — API (ReDoc)",
        redoc_js_url=f"{_ASSET_DIR}/redoc.standalone.js",
        redoc_favicon_url=f"{_ASSET_DIR}/favicon.png",
        with_google_fonts=False,
    )


@router.get("/static/docs/{name}")
def docs_asset(name: str) -> Response:
    """One of :data:`DOCS_ASSETS`, cached by the browser for a day."""
    media = DOCS_ASSETS.get(name)
    if media is None:
        raise HTTPException(404, f"There is no documentation asset {name!r}.")
    return Response(
        _asset(name), media_type=media, headers={"Cache-Control": "public, max-age=86400"}
    )


#: ReDoc's side menu shows a logo from Redocly's CDN; the page's own icon replaces it,
#: so not even an image request leaves the machine.
_OUTSIDE = {b"https://cdn.redoc.ly/redoc/logo-mini.svg": b"static/favicon.svg"}


@lru_cache(maxsize=len(DOCS_ASSETS))
def _asset(name: str) -> bytes:
    data = (resources.files("fastapi_offline") / "static" / name).read_bytes()
    for outside, local in _OUTSIDE.items():
        data = data.replace(outside, local)
    return data
