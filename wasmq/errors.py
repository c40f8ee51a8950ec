"""What the Python client raises: one base class, one subclass per thing a
caller can act on, each carrying the gateway's own message."""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base of every error the wasmq client raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidUrl(ClientError, ValueError):
    """The gateway's URL cannot be used as given (no http:// or https://, no host)."""


class ConnectError(ClientError):
    """The gateway could not be reached or did not answer in time."""


class ApiError(ClientError):
    """The gateway refused the request; `status` is the HTTP code, `body` its reply."""

    def __init__(self, message: str, status: int, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or {}


class BadRequest(ApiError):
    """400: the request (envelope, module, parameter) is wrong; the message says how."""


class AuthError(ApiError):
    """401 or 403: a missing or wrong API key (`Client(url, key=...)`, WASMQ_API_KEY)."""


class NotFound(ApiError):
    """404: no such function or task (or its result has expired)."""


class TooLarge(ApiError):
    """413: the input or module is over the server's limit."""


class RateLimited(ApiError):
    """429: too many calls; try again after `retry_after` seconds."""

    def __init__(self, message: str, status: int, body: dict[str, Any] | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, status, body)
        self.retry_after = retry_after


class ServerError(ApiError):
    """5xx: the gateway or its Redis is in trouble; retrying later may help."""


class BuildFailed(ClientError):
    """The server could not build the uploaded model; the message says why."""

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record


class ConversionDrift(UserWarning):
    """The ONNX conversion answers differently from the estimator it was converted from
    (a warning: the endpoint matches the ONNX model; the message says by how much)."""


class ModelMismatch(ClientError):
    """The endpoint answered the example differently from the model run locally."""


class TaskFailed(ClientError):
    """The task ran and failed (statusCode 0): a trap, a limit, pred() non-zero."""

    def __init__(self, message: str, tid: str, reply: dict[str, Any]) -> None:
        super().__init__(message)
        self.tid = tid
        self.reply = reply

    @property
    def logs(self) -> dict[str, str]:
        return self.reply.get("logs") or {}


class TaskTimeout(ClientError, TimeoutError):
    """The task was still queued or running when the caller stopped waiting;
    `tid` and `result_url` fetch it later."""

    def __init__(self, message: str, tid: str, result_url: str) -> None:
        super().__init__(message)
        self.tid = tid
        self.result_url = result_url


def for_status(status: int) -> type[ApiError]:
    if status in (401, 403):
        return AuthError
    if status >= 500:
        return ServerError
    return {400: BadRequest, 404: NotFound, 413: TooLarge, 429: RateLimited}.get(status,
                                                                                ApiError)
