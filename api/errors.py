"""One place that turns every failure into the Scailable reply shape.

Users never see a stack trace or an HTML error page: a domain error answers
the HTTP status and headers its class has in `HTTP_REPLIES`, with its message;
Redis outages answer 503; anything unexpected is logged with its traceback and
answers a plain 500 JSON.

HTTP lives here, not in broker/errors.py, so the shared layer stays free of
it. A new domain error gets its line in the table (tests/test_errors.py fails
for a class of broker/errors.py without one); a subclass elsewhere answers
as its nearest mapped base does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from quart import Quart, Response, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from wasmq.api.negotiation import respond
from wasmq.api.replies import error_body
from wasmq.api.upload_form import UPLOADS
from wasmq.broker.connections import storage_full
from wasmq.broker.errors import (
    BadRequest,
    BuildFailed,
    BuildsBusy,
    ConfigError,
    Forbidden,
    FunctionBuilding,
    InvalidModule,
    NotFound,
    QuotaExceeded,
    RateLimited,
    StorageFull,
    TaskFailed,
    TooLarge,
    TooManyInFlight,
    Unauthorized,
    Unavailable,
    WasmqError,
)
from wasmq.toolchain.build import big_model_limits

log = logging.getLogger("wasmq.gateway")
STORAGE_FULL = ("storage is full: Redis has reached its memory limit and refuses new writes "
                "(nothing already stored is lost); try again once results expire "
                "(WASMQ_RESULT_TTL), or ask the operator to raise WASMQ_REDIS_MAXMEMORY_MB")


def _no_headers(exc: WasmqError) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class HttpReply:
    """The status a domain error answers with, and the headers built from it."""

    status: int
    headers: Callable[[WasmqError], dict[str, str]] = field(default=_no_headers)


HTTP_REPLIES: dict[type[WasmqError], HttpReply] = {
    WasmqError: HttpReply(500),
    ConfigError: HttpReply(500),
    BadRequest: HttpReply(400),
    InvalidModule: HttpReply(400),
    Unauthorized: HttpReply(401, lambda exc: {"WWW-Authenticate": 'Bearer realm="wasmq"'}),
    Forbidden: HttpReply(403),
    NotFound: HttpReply(404),
    TooLarge: HttpReply(413),
    RateLimited: HttpReply(429, lambda exc: {"Retry-After": str(exc.retry_after)}),
    TooManyInFlight: HttpReply(429, lambda exc: {"Retry-After": str(exc.retry_after)}),
    Unavailable: HttpReply(503),
    BuildsBusy: HttpReply(503, lambda exc: {"Retry-After": str(exc.retry_after)}),
    FunctionBuilding: HttpReply(503, lambda exc: {"Retry-After": str(exc.retry_after)}),
    BuildFailed: HttpReply(409),
    StorageFull: HttpReply(507),
    QuotaExceeded: HttpReply(507),
    TaskFailed: HttpReply(200),  # the task ran and failed: a Scailable statusCode 0
}


def http_reply(exc: WasmqError) -> HttpReply:
    """The entry of the error's class, else of its nearest base in the table."""
    for cls in type(exc).__mro__:
        if cls in HTTP_REPLIES:
            return HTTP_REPLIES[cls]
    raise TypeError(f"{type(exc).__name__} is not a WasmqError")  # pragma: no cover


def reply_for(exc: BaseException) -> tuple[int, dict[str, str], str]:
    """The status, headers and message an error answers with, wherever it was met
    (a view, or a batch sending the call: api/batcher.py)."""
    if isinstance(exc, WasmqError):
        reply = http_reply(exc)
        return reply.status, reply.headers(exc), exc.message
    if storage_full(exc):  # before the outage test: a full Redis answers
        log.warning("storage full: %s", exc)
        return reply_for(StorageFull(STORAGE_FULL))
    if _is_broker_outage(exc):
        log.warning("broker unavailable: %s", exc)
        return 503, {}, "the queue backend (Redis) is unavailable; try again shortly"
    log.error("unexpected error", exc_info=exc)
    return 500, {}, "internal error in the gateway; it has been logged"


def _json(message: str, status: int) -> Response:
    return respond(error_body(message), status)


def register_error_handlers(app: Quart) -> None:
    # Each handler is a coroutine: Quart runs a plain function on a thread.
    @app.errorhandler(WasmqError)
    async def wasmq_error(exc: WasmqError) -> Response:
        return error_response(exc)

    @app.errorhandler(RequestEntityTooLarge)
    async def too_large(exc: RequestEntityTooLarge) -> Response:
        limit = g.get("body_limit", "the limit of this route")
        declared, allowed = request.content_length, request.max_content_length
        if declared is None:  # chunked: read up to the limit, and no further
            return _json(f"request body is larger than {limit}", 413)
        if allowed is not None and declared > allowed:
            # An upload this large is most likely a big model: name all it needs at once.
            hint = f". If it is a model: {big_model_limits(0, declared)}" \
                if request.endpoint in UPLOADS else ""
            return _json(f"request body of {declared} bytes is larger than {limit}; "
                         f"it was refused unread{hint}", 413)
        return _json(f"request body or one of its form fields is too large ({limit}; "
                     "text fields up to 64 KiB)", 413)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        response = _json(_routing_message(exc), exc.code or 500)
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        return error_response(exc)


def error_response(exc: BaseException) -> Response:
    """The reply to an error, wherever it was met."""
    status, headers, message = reply_for(exc)
    return respond(error_body(message), status, headers)


def _routing_message(exc: HTTPException) -> str:
    """Unknown routes and methods in wasmq's words, so a client pointed at the
    wrong path learns that it reached wasmq, and where the routes are."""
    where = f"{request.method} {request.path}"
    if exc.code == 404:
        return (f"nothing at {where} on this wasmq gateway: its routes are /task/<cfid>, "
                "/retrieve/<tid>, /functions, /file/<cfid>.wasm and the console at /")
    if exc.code == 405 and exc.valid_methods:
        allowed = ", ".join(m for m in exc.valid_methods if m not in ("HEAD", "OPTIONS"))
        return f"{where} is not allowed: {request.path} answers {allowed}"
    return f"{exc.name}: {exc.description}"


def _is_broker_outage(exc: BaseException) -> bool:
    from kombu.exceptions import OperationalError

    return isinstance(exc, (OperationalError, ConnectionError, redis.RedisError))
