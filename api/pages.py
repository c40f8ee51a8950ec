"""The web console: list, upload, try-out and API pages.

The pages are shells that call the public HTTP API from the browser with a
little plain JavaScript, so they show exactly what a script would get (the
server's own validation messages, statusCode, resultUrl) and obey the same
access rules; nothing is rendered from Redis behind the API's back.
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from flask import Blueprint, render_template, request, send_from_directory
from flask.typing import ResponseReturnValue

from api.services import services

bp = Blueprint("pages", __name__, template_folder="templates")

SWAGGER_UI = Path(swagger_ui_bundle.swagger_ui_path)


def _page(template: str, title: str) -> str:
    # Snippets on the pages name the URL a client outside should use.
    public = services().settings.public_url.rstrip("/")
    return render_template(template, title=title,
                           api_base=public or request.host_url.rstrip("/"))


@bp.get("/")
@bp.get("/index.html")
def index() -> ResponseReturnValue:
    return _page("index.html", "Endpoints")


@bp.get("/upload.html")
def upload() -> ResponseReturnValue:
    return _page("upload.html", "Upload a module")


@bp.get("/run.html")
def run() -> ResponseReturnValue:
    return _page("run.html", "Try it")


@bp.get("/api.html")
def api_docs() -> ResponseReturnValue:
    return _page("api.html", "HTTP API")


@bp.get("/swagger-ui/<path:filename>")
def swagger_asset(filename: str) -> ResponseReturnValue:
    """Swagger UI's prebuilt files, served from the wheel that ships them."""
    return send_from_directory(SWAGGER_UI, filename, max_age=3600)
