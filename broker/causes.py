"""Why a task failed, as a value that travels from the runtime to the record and /metrics.

A cause is decided where the failure happens (the runtime knows it timed out, it
does not have to be read back from a message), so counting failures by cause can
never drift from the wording of the messages.
"""

from __future__ import annotations

from enum import Enum


class Cause(str, Enum):
    TIMEOUT = "timeout"  # the task's wall-time limit
    MEMORY = "memory"  # the linear memory limit
    OUTPUT_LIMIT = "output_limit"  # the module wrote more than the output limit
    PRED_FAILED = "pred_failed"  # pred() returned non-zero
    EXIT = "exit"  # the module called proc_exit
    TRAP = "trap"  # any other wasm trap
    ABI = "abi"  # an export or pointer that breaks the ABI
    MISSING_DATA = "missing_data"  # the input or binary was gone when the task ran
    WORKER_LOST = "worker_lost"  # the run ended its worker process too many times
    CANCELLED = "cancelled"  # an operator purged or cancelled it
    MODULE_ERROR = "module_error"  # the module failed in a way not listed above
    INTERNAL = "internal"  # a bug of wasmq's
