"""Why a task failed, as a value that travels from the runtime to the record and /metrics.

A cause is decided where the failure happens (the runtime knows it timed out, it
does not have to be read back from a message), so counting failures by cause can
never drift from the wording of the messages.
"""

from __future__ import annotations

from enum import Enum


class Cause(str, Enum):
    TIMEOUT = "timeout"
    MEMORY = "memory"
    OUTPUT_LIMIT = "output_limit"
    PRED_FAILED = "pred_failed"
    EXIT = "exit"
    TRAP = "trap"
    HOST_LIMIT = "host_limit"
    ABI = "abi"
    MISSING_DATA = "missing_data"
    WORKER_LOST = "worker_lost"
    CANCELLED = "cancelled"
    STORAGE_FULL = "storage_full"
    MODULE_ERROR = "module_error"
    INTERNAL = "internal"

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self]


# What each cause means, for the README and /metrics' readers; a test checks
# that every cause has one and is exported.
DESCRIPTIONS = {
    Cause.TIMEOUT: "the task's wall-time limit (or Celery's hard limit) was exceeded",
    Cause.MEMORY: "the module needed more linear memory or table than its limit",
    Cause.OUTPUT_LIMIT: "the module's output was larger than the output limit",
    Cause.PRED_FAILED: "pred() returned non-zero",
    Cause.EXIT: "the module called proc_exit",
    Cause.TRAP: "a wasm trap (unreachable, out-of-bounds access, division by zero, ...)",
    Cause.HOST_LIMIT: "a WASI call asked for more than its cap (iovecs, subscriptions, ...)",
    Cause.ABI: "the module broke the ABI (bad pointer or length, cannot be linked)",
    Cause.MISSING_DATA: "the task's input or its function's binary was gone when it ran",
    Cause.WORKER_LOST: "its runs ended their worker process WASMQ_MAX_ATTEMPTS times",
    Cause.CANCELLED: "an operator cancelled or purged it before it ran",
    Cause.STORAGE_FULL: "Redis had no room left to store the task's result",
    Cause.MODULE_ERROR: "the module failed in a way none of the above names",
    Cause.INTERNAL: "a bug of wasmq's in the worker",
}
