"""The gateway's app factory: configuration passed in, nothing global at import.

A request's path through the gateway: api/linger.py (a refused request's body is
still read, so its reply arrives), api/cors.py (the CORS headers of every reply),
api/bounds.py (who the caller is, and what it may hold), api/request_log.py (its log
line), api/upload_body.py (an upload's body read as fast as it is parsed), then in
the app the route's one handler (api/tasks.py, api/functions.py, api/meta.py,
api/metrics.py, api/pages.py), api/negotiation.py (the reply encoded), and
api/errors.py for whatever was raised on the way.

Quart, Pallets' async Flask, so that a call waiting for its task waits on the event
loop instead of holding a thread; views that block (Redis reads, builds) are plain
functions, which Quart runs on the threads api/bounds.py shares out.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from quart import Quart, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from wasmq.api import functions, meta, metrics, pages, tasks
from wasmq.api.bounds import Bounds, bounds
from wasmq.api.cors import Cors
from wasmq.api.errors import register_error_handlers
from wasmq.api.linger import Linger
from wasmq.api.request_log import RequestLog
from wasmq.api.services import Services
from wasmq.api.upload_body import BodyWindow
from wasmq.api.upload_form import UPLOADS
from wasmq.broker.settings import MB, Settings

BODY_SLACK = 64 * 1024
LINGER_MARGIN = 1 * MB  # read past a refused body's limit before closing

P = ParamSpec("P")
T = TypeVar("T")


class Gateway(Quart):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaitable: dict[Callable, Callable] = {}

    def ensure_async(self, func: Callable[P, Any]) -> Callable[P, Awaitable[Any]]:
        """Quart asks for every hook and view of every request: answer from a table."""
        made = self._awaitable.get(func)
        if made is None:
            made = self._awaitable[func] = super().ensure_async(func)
        return made

    def sync_to_async(self, func: Callable[P, T]) -> Callable[P, Awaitable[T]]:
        """A plain view runs on the gateway's threads, within its caller's share."""
        return bounds().on_thread(func)


def create_app(settings: Settings | None = None) -> Quart:
    settings = settings or Settings.from_env()
    app = Gateway(__name__)
    app.json.sort_keys = False
    biggest = max(settings.max_module_mb, settings.max_input_mb) * MB + BODY_SLACK
    app.config["MAX_CONTENT_LENGTH"] = biggest  # what a request may buffer, any route
    app.config["BODY_TIMEOUT"] = settings.body_timeout  # api/envelope.py, api/upload_body.py
    app.extensions["wasmq"] = svc = Services.build(settings)
    limits = Bounds(RequestLog(BodyWindow(app.asgi_app)), settings)
    app.extensions["wasmq.bounds"] = limits
    for blueprint in (tasks.bp, functions.bp, meta.bp, metrics.bp, pages.bp):
        app.register_blueprint(blueprint)
    register_error_handlers(app)

    module_limit = (settings.max_module_mb * MB + BODY_SLACK,
                    f"the module size limit of {settings.max_module_mb} MB (WASMQ_MAX_MODULE_MB)")
    input_limit = (settings.max_input_mb * MB + BODY_SLACK,
                   f"the input limit of {settings.max_input_mb} MB (WASMQ_MAX_INPUT_MB)")

    @app.before_request
    async def limit_body() -> None:
        # Refuse oversized bodies from Content-Length, before reading them.
        req = request
        limit, g.body_limit = module_limit if req.endpoint in UPLOADS else input_limit
        req.max_content_length = limit
        if (req.content_length or 0) > limit:
            raise RequestEntityTooLarge()

    @app.after_serving
    async def stop_jobs() -> None:
        await bounds().on_thread(svc.jobs.stop)()

    app.asgi_app = Linger(Cors(limits), biggest + LINGER_MARGIN)  # type: ignore[method-assign]
    logging.getLogger("wasmq").setLevel(logging.INFO)
    return app

