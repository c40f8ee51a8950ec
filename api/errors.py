"""One place that turns every failure into the Scailable reply shape.

Users never see a stack trace or an HTML error page: known errors carry their
own HTTP code and message; Redis outages answer 503; anything unexpected is
logged with its traceback and answers a plain 500 JSON.
"""

from __future__ import annotations

import logging

import redis
from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from wasmq.api.replies import error_body
from wasmq.broker.connections import storage_full
from wasmq.broker.errors import StorageFull, WasmqError

log = logging.getLogger("wasmq.gateway")
STORAGE_FULL = ("storage is full: Redis has reached its memory limit and refuses new writes "
                "(nothing already stored is lost); try again once results expire "
                "(WASMQ_RESULT_TTL), or ask the operator to raise WASMQ_REDIS_MAXMEMORY_MB")


def _json(message: str, status: int):
    response = jsonify(error_body(message))
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(WasmqError)
    def wasmq_error(exc: WasmqError):
        response = _json(exc.message, exc.http_status)
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
        limit = g.get("body_limit", "the limit of this route")
        declared, allowed = request.content_length, request.max_content_length
        if declared is None:  # chunked: read up to the limit, and no further
            return _json(f"request body is larger than {limit}", 413)
        if allowed is not None and declared > allowed:
            return _json(f"request body of {declared} bytes is larger than {limit}; "
                         "it was refused unread", 413)
        return _json(f"request body or one of its form fields is too large ({limit}; "
                     "text fields up to 64 KiB)", 413)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        response = _json(f"{exc.name}: {exc.description}", exc.code or 500)
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        if storage_full(exc):  # before the outage test: a full Redis answers
            log.warning("storage full: %s", exc)
            return wasmq_error(StorageFull(STORAGE_FULL))
        if _is_broker_outage(exc):
            log.warning("broker unavailable: %s", exc)
            return _json("the queue backend (Redis) is unavailable; try again shortly", 503)
        log.exception("unexpected error")
        return _json("internal error in the gateway; it has been logged", 500)


def _is_broker_outage(exc: BaseException) -> bool:
    from kombu.exceptions import OperationalError

    return isinstance(exc, (OperationalError, ConnectionError, redis.RedisError))
