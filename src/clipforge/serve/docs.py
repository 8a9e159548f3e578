"""The API pages (/docs: Swagger UI, /redoc: ReDoc) with their scripts served by this server, not a CDN.

FastAPI's default pages load swagger-ui-dist and ReDoc from a public CDN, so on a machine without a network (the
situation clipforge is built for) /docs is blank. The assets come from the pinned ``fastapi-offline`` package
(MIT; it ships swagger-ui-dist, Apache-2.0, and ReDoc, MIT, as files) and are wired the way FastAPI documents
for self-hosting: ``docs_url=None`` and ``get_swagger_ui_html`` / ``get_redoc_html`` pointed at a local mount.
"""
from __future__ import annotations

import importlib.resources
import logging

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles

log = logging.getLogger("clipforge.serve")
ASSETS = "/docs-assets"


def _asset_dir():
    try:
        d = importlib.resources.files("fastapi_offline") / "static"
    except ModuleNotFoundError:
        return None
    return d if (d / "swagger-ui-bundle.js").is_file() else None


def add_offline_docs(app: FastAPI) -> None:
    """/docs and /redoc on ``app`` (created with ``docs_url=None, redoc_url=None``) from local assets."""
    assets = _asset_dir()
    if assets is None:  # pragma: no cover - the package is a pinned dependency of the service
        log.warning("fastapi-offline is not installed: the API pages are unavailable (pip install fastapi-offline)")
        return
    app.mount(ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    redirect = app.swagger_ui_oauth2_redirect_url

    @app.get("/docs", include_in_schema=False)
    def swagger():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API",
                                   oauth2_redirect_url=redirect, swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css", swagger_favicon_url=f"{ASSETS}/favicon.png")

    @app.get(redirect, include_in_schema=False)
    def swagger_redirect():
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc():
        return get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} - API",
                              redoc_js_url=f"{ASSETS}/redoc.standalone.js", redoc_favicon_url=f"{ASSETS}/favicon.png",
                              with_google_fonts=False)
