"""Turn wasmtime's typed errors into messages a module's author can act on.

The typed error is inspected (trap code, first frame of the backtrace) rather
than flattened to a string early.
"""

from __future__ import annotations

import wasmtime

from workers.limits import Limits

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
        return f" in {name} (module offset {frame.module_offset:#x})"
    return ""


def describe(exc: Exception, phase: str, limits: Limits, memory_bytes: int | None) -> str:
    """One sentence: what went wrong, where, and which limit if any."""
    if isinstance(exc, wasmtime.Trap):
        code = exc.trap_code
        if code == wasmtime.TrapCode.INTERRUPT:
            return f"time limit of {limits.timeout_s:g} s exceeded during {phase}()"
        text = _CODE_TEXT.get(code, exc.message.strip().splitlines()[0] if exc.message
                              else "trap")
        hint = ""
        if memory_bytes is not None and memory_bytes + 65536 > limits.max_memory:
            hint = f" (linear memory is at the limit of {limits.max_memory_mb:g} MB)"
        return f"module trapped during {phase}(): {text}{first_frame(exc)}{hint}"
    if isinstance(exc, wasmtime.WasmtimeError):
        text = str(exc).strip().splitlines()[0]
        if "memory" in text and ("limit" in text or "resource" in text or "grow" in text):
            return (f"module needs more linear memory than the limit of "
                    f"{limits.max_memory_mb:g} MB ({text})")
        return f"module failed during {phase}(): {text}"
    return f"module failed during {phase}(): {exc}"
