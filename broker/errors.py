"""One exception hierarchy: each error a user can act on maps to an HTTP code
and a Scailable `statusCode 0` reply with its message, in one handler."""

from __future__ import annotations

from wasmq.broker.causes import Cause


class WasmqError(Exception):
    http_status = 500
    headers: dict[str, str] = {}  # read-only, per class

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(WasmqError):
    """A setting from the environment is malformed."""


class BadRequest(WasmqError):
    http_status = 400


class InvalidModule(BadRequest):
    """The uploaded bytes are not a module wasmq can run."""


class TooLarge(WasmqError):
    http_status = 413


class Unauthorized(WasmqError):
    http_status = 401
    headers = {"WWW-Authenticate": 'Bearer realm="wasmq"'}


class Forbidden(WasmqError):
    http_status = 403


class NotFound(WasmqError):
    http_status = 404


class RateLimited(WasmqError):
    http_status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class TooManyInFlight(RateLimited):
    """The caller already has its cap of tasks queued or running."""


class Unavailable(WasmqError):
    """Redis or another backing service cannot be reached."""

    http_status = 503


class BuildsBusy(WasmqError):
    """Every build slot is taken and the queue of waiting builds is full."""

    http_status = 503
    headers = {"Retry-After": "5"}


class StorageFull(WasmqError):
    """Redis refused a write for memory (maxmemory with noeviction)."""

    http_status = 507


class TaskFailed(WasmqError):
    """The module failed its own task (trap, limit, non-zero pred), for `cause`."""

    http_status = 200

    def __init__(self, message: str, cause: Cause = Cause.MODULE_ERROR) -> None:
        super().__init__(message)
        self.cause = cause
