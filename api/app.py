"""The gateway's app factory: configuration passed in, nothing global at import."""

from __future__ import annotations

import logging

from flask import Flask, g, request
from flask_cors import CORS

from wasmq.api import functions, meta, metrics, pages, tasks
from wasmq.api.errors import register_error_handlers
from wasmq.api.request_log import register_request_log
from wasmq.api.services import Services
from wasmq.broker.settings import MB, Settings

BODY_SLACK = 64 * 1024


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.json.sort_keys = False
    app.extensions["wasmq"] = Services.build(settings)
    for blueprint in (tasks.bp, functions.bp, meta.bp, metrics.bp, pages.bp):
        app.register_blueprint(blueprint)
    CORS(app, resources={r"/task/*": {}, r"/retrieve/*": {}, r"/file/*": {}},
         expose_headers=["Retry-After"])
    register_error_handlers(app)
    register_request_log(app)

    @app.before_request
    def limit_body() -> None:
        # Refuse oversized bodies from Content-Length, before reading them.
        if request.endpoint in ("functions.create", "functions.replace"):
            request.max_content_length = settings.max_module_mb * MB + BODY_SLACK
            g.body_limit = f"the module size limit of {settings.max_module_mb} MB " \
                           "(WASMQ_MAX_MODULE_MB)"
        else:
            request.max_content_length = settings.max_input_mb * MB + BODY_SLACK
            g.body_limit = f"the input limit of {settings.max_input_mb} MB " \
                           "(WASMQ_MAX_INPUT_MB)"

    logging.getLogger("wasmq").setLevel(logging.INFO)
    return app
