"""The web console: list, upload, try-out and API pages.

The pages are shells that call the public HTTP API from the browser with a
little plain JavaScript, so they show exactly what a script would get (the
server's own validation messages, statusCode, resultUrl) and obey the same
access rules; nothing is rendered from Redis behind the API's back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import swagger_ui_bundle
from quart import Blueprint, Response, render_template, request, send_from_directory

from wasmq.api.services import services

bp = Blueprint("pages", __name__, template_folder="templates")

SWAGGER_UI = Path(swagger_ui_bundle.swagger_ui_path)


# endpoint, template, title, URLs
PAGES = (
    ("index", "index.html", "Endpoints", ("/", "/index.html")),
    ("upload", "upload.html", "Upload a module", ("/upload.html",)),
    ("run", "run.html", "Try it", ("/run.html",)),
    ("api_docs", "api.html", "HTTP API", ("/api.html",)),
)


def _view(template: str, title: str) -> Callable[[], Awaitable[str]]:
    async def view() -> str:
        # Snippets on the pages name the URL a client outside should use.
        public = services().settings.public_url.rstrip("/")
        return await render_template(template, title=title,
                               api_base=public or request.host_url.rstrip("/"))

    return view


for _endpoint, _template, _title, _rules in PAGES:
    _page_view = _view(_template, _title)
    for _rule in _rules:
        bp.add_url_rule(_rule, _endpoint, _page_view, methods=["GET"])


@bp.get("/swagger-ui/<path:filename>")
async def swagger_asset(filename: str) -> Response:
    """Swagger UI's prebuilt files, served from the wheel that ships them."""
    return await send_from_directory(SWAGGER_UI, filename, cache_timeout=3600)
