"""/docs: Swagger UI served by this app, from files a maintained package ships; no CDN.

FastAPI's own /docs loads Swagger UI from a CDN, so it was a blank page on a
machine without Internet access (a lab, a demo on loopback). The PyPI package
fastapi-offline bundles Swagger UI 5 (which reads OpenAPI 3.1); its files are
served here as they were installed, never copied into this repository.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response

#: Where fastapi-offline keeps Swagger UI's bundle and stylesheet.
SWAGGER_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
#: The files the page loads, with their media types: nothing else is served.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
ASSETS_URL = "/docs/assets"

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - API",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        # Swagger UI would otherwise send the whole document to its online validator.
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get(ASSETS_URL + "/{name}")
def swagger_asset(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(status_code=404, detail="no such file")
    return FileResponse(
        SWAGGER_DIR / name,
        media_type=ASSETS[name],
        headers={"Cache-Control": "public, max-age=86400"},
    )


__all__ = ["ASSETS", "SWAGGER_DIR", "router"]
