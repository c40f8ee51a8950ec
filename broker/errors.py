"""One exception hierarchy for what gateway and workers share.

These are domain errors: each says what went wrong, in a message a user can
act on, and knows nothing of HTTP. The gateway maps each class to its status
and headers in one table (api/errors.py); the workers store the message with
the task.
"""

from __future__ import annotations

from wasmq.broker.causes import Cause

# Longest reason a refusal or a failed build's record keeps: model-given names inside
# one are cut already (toolchain/model/tensors.py), and records are listed often.
MAX_REASON = 600


def cut_reason(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON else reason[:MAX_REASON - 3] + "..."


class WasmqError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(WasmqError):
    """A setting from the environment is malformed."""


class BadRequest(WasmqError):
    """The request (envelope, parameter, form field) is wrong; the message says how."""


class InvalidModule(BadRequest):
    """The uploaded bytes are not a module wasmq can run."""


class TooLarge(WasmqError):
    """An input, module or field is over its limit."""


class Unauthorized(WasmqError):
    """The action needs an API key and none was presented."""


class Forbidden(WasmqError):
    """The key presented (or the lack of configured keys) does not allow the action."""


class NotFound(WasmqError):
    """No such function or task, or its record has expired."""


class RateLimited(WasmqError):
    """A client went over its submission rate; it may try again in `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyInFlight(RateLimited):
    """The caller already has its cap of tasks queued or running."""


class Unavailable(WasmqError):
    """Redis or another backing service cannot be reached."""


class BuildsBusy(WasmqError):
    """Every build slot is taken and the queue of waiting builds is full."""

    retry_after = 5


class FunctionBuilding(WasmqError):
    """The function's model is still being built; it answers once the build is over."""

    retry_after = 2


class BuildFailed(WasmqError):
    """The function's model could not be built; the message says why and what to do."""


class StorageFull(WasmqError):
    """Redis refused a write for memory (maxmemory with noeviction)."""


class QuotaExceeded(StorageFull):
    """A caller keeps as many bytes in the store as its quota allows
    (WASMQ_STORAGE_PER_CALLER_MB); others' calls go on."""


class TaskFailed(WasmqError):
    """The module failed its own task (trap, limit, non-zero pred), for `cause`."""

    def __init__(self, message: str, cause: Cause = Cause.MODULE_ERROR) -> None:
        super().__init__(message)
        self.cause = cause
