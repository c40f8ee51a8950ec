"""Rate limits on task submissions, counted in the same Redis (Flask-Limiter).

Counted per valid API key, else per client address, so an unknown key cannot
buy a fresh allowance. Behind a reverse proxy the client address is the
proxy's unless the proxy's headers are trusted (see the README). Polling
`/retrieve` is not limited: it is cheap and clients poll in loops.
"""

from __future__ import annotations

import hashlib

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded

from api.access import valid_key
from api.replies import error_body
from api.services import services
from broker import keys
from broker.settings import Settings

LIMITED_ENDPOINTS = ("tasks.submit",)


def client_identity() -> str:
    key = valid_key(services().settings)
    if key is not None:  # a digest, so keys never sit in Redis in clear
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:32]
    return "addr:" + (request.remote_addr or "unknown")


def install_rate_limit(app: Flask, settings: Settings) -> Limiter | None:
    if not settings.rate_limit_enabled:
        return None
    limiter = Limiter(client_identity, app=app, storage_uri=settings.redis_url,
                      # A hung Redis costs a submission one short wait here
                      # (errors are swallowed) before the record's own timeout.
                      storage_options={"socket_connect_timeout": 2, "socket_timeout": 1},
                      key_prefix=keys.RATE_LIMIT, strategy="fixed-window",
                      headers_enabled=True, swallow_errors=True, default_limits=[])
    for endpoint in LIMITED_ENDPOINTS:
        app.view_functions[endpoint] = limiter.limit(settings.rate_limit)(
            app.view_functions[endpoint])

    @app.errorhandler(RateLimitExceeded)
    def too_many(exc: RateLimitExceeded) -> ResponseReturnValue:
        who = "API key" if valid_key(settings) else "client address"
        response = jsonify(error_body(
            f"rate limit of {exc.description} exceeded for this {who}; "
            f"retry after the time in the Retry-After header"))
        response.status_code = 429
        return response

    return limiter
