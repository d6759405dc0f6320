"""``/docs`` with no network beyond the API: Swagger UI's files come from a pinned package.

FastAPI's default page loads Swagger UI from a public CDN, so on machines and in clusters without
a way out it renders blank. This is FastAPI's documented recipe for self-hosting the docs
assets: the files of ``swagger-ui-bundle-v2`` (Swagger UI itself, its version pinned in
pyproject.toml) on a ``StaticFiles`` mount, and ``get_swagger_ui_html`` pointing at them.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse
from swagger_ui_bundle import swagger_ui_path

DOCS = "/docs"
ASSETS = "/docs/assets"


def serve_docs(app: FastAPI) -> None:
    """Serve Swagger UI at ``/docs`` from the package (build ``app`` with ``docs_url=None``)."""
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    async def docs(request: Request) -> HTMLResponse:
        # Behind a proxy that strips a prefix, every URL the page loads needs it back.
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon-32x32.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    app.add_route(DOCS, docs, include_in_schema=False)
