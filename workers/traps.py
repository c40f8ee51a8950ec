"""Turn wasmtime's typed errors into messages a module's author can act on.

The typed error is inspected (trap code, first frame of the backtrace) rather
than flattened to a string early.
"""

from __future__ import annotations

from dataclasses import dataclass

import wasmtime

from wasmq.broker.causes import Cause
from wasmq.broker.limits import Limits
from wasmq.broker.settings import MB

_CODE_TEXT = {
    wasmtime.TrapCode.STACK_OVERFLOW: "call stack exhausted (stack overflow)",
    wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS: "out-of-bounds memory access",
    wasmtime.TrapCode.UNREACHABLE: "'unreachable' instruction executed",
    wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO: "integer division by zero",
    wasmtime.TrapCode.INTEGER_OVERFLOW: "integer overflow",
    wasmtime.TrapCode.INDIRECT_CALL_TO_NULL: "indirect call to a null table entry",
    wasmtime.TrapCode.BAD_SIGNATURE: "indirect call signature mismatch",
    wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS: "out-of-bounds table access",
    wasmtime.TrapCode.BAD_CONVERSION_TO_INTEGER: "invalid float-to-int conversion",
}


def first_frame(trap: wasmtime.Trap) -> str:
    try:
        frames = trap.frames
    except Exception:  # frames are a nicety; never let them hide the trap itself
        return ""
    for frame in frames:
        name = frame.func_name or f"func[{frame.func_index}]"
        offset = frame.module_offset
        # wasmtime reports u64::MAX when it has no offset (e.g. a stack overflow
        # caught at function entry).
        where = f" (module offset {offset:#x})" if 0 <= offset < 2**32 else ""
        return f" in {name}{where}"
    return ""


def memory_hint(memory_bytes: int | None, limits: Limits) -> str:
    """Name the memory limit when the module's memory ended up against it.

    wasmtime makes `memory.grow` past the limit return -1 instead of trapping
    (its C API has no trap-on-grow-failure switch) and a module then fails in
    its own way: a trap, pred() != 0, an exit. Memory never shrinks, so a
    memory close to the limit at failure time means a refused grow most
    likely caused it. A single huge request refused far below the limit
    leaves no such trace, and gets no hint.
    """
    if memory_bytes is None:
        return ""
    headroom = limits.max_memory - memory_bytes
    if headroom >= max(MB, limits.max_memory // 16):
        return ""
    return (f" (linear memory had grown to {memory_bytes / MB:.2f} MB of the memory limit "
            f"of {limits.max_memory_mb:g} MB: memory.grow past the limit returns -1, so "
            f"the module most likely ran out of memory)")


def _cause(text: str) -> str:
    """The first line that says what happened.

    wasmtime's errors start with "error while executing at wasm backtrace:"
    and the backtrace; the reason follows "Caused by:" (e.g. a WASI call
    refusing its arguments).
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if "Caused by:" in lines and lines.index("Caused by:") + 1 < len(lines):
        reason = lines[lines.index("Caused by:") + 1]
        return reason.split(": ", 1)[1] if reason[:1].isdigit() else reason
    return lines[0] if lines else "unknown error"


@dataclass(frozen=True)
class Failure:
    cause: Cause
    message: str


def describe(exc: Exception, phase: str, limits: Limits, memory_bytes: int | None,
             table_elements: int = 0) -> Failure:
    """One sentence: what went wrong, where, and which limit if any; and its cause."""
    if isinstance(exc, wasmtime.Trap):
        code = exc.trap_code
        if code == wasmtime.TrapCode.INTERRUPT:
            return Failure(Cause.TIMEOUT,
                           f"time limit of {limits.timeout_s:g} s exceeded during {phase}()")
        text = _CODE_TEXT.get(code, _cause(exc.message) if exc.message else "trap")
        hint = memory_hint(memory_bytes, limits)
        return Failure(Cause.MEMORY if hint else Cause.TRAP,
                       f"module trapped during {phase}(): {text}{first_frame(exc)}{hint}")
    if isinstance(exc, wasmtime.WasmtimeError):
        text = _cause(str(exc))
        if "count too high" in text:
            return Failure(Cause.ABI, f"module refused at {phase}(): a task gets one instance "
                                      f"with one linear memory, and this module asks for more "
                                      f"({text})")
        if "table" in text and "limit" in text:
            return Failure(Cause.MEMORY, f"module refused at {phase}(): its table is larger "
                                         f"than the limit of {table_elements:,} elements "
                                         f"({text})")
        if "memory" in text and ("limit" in text or "resource" in text or "grow" in text):
            return Failure(Cause.MEMORY, f"module needs more linear memory than the memory "
                                         f"limit of {limits.max_memory_mb:g} MB ({text})")
        return Failure(Cause.MODULE_ERROR, f"module failed during {phase}(): {text}")
    return Failure(Cause.MODULE_ERROR, f"module failed during {phase}(): {exc}")
