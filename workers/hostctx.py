"""Per-task host state that WASI host functions reach without globals.

A worker process runs one task at a time, but the legacy `wasi_unstable` host
functions are defined once per linker and must write into the *current* task's
captured stdout/stderr. A ContextVar carries that task state to them.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass, field

LOG_CAP = 64 * 1024


class OutOfTime(Exception):
    """Raised by a host function that would block past the task's deadline."""

    def __init__(self, asked_s: float) -> None:
        super().__init__(f"module asked to wait {asked_s:g} s")
        self.asked_s = asked_s


class ModuleExit(Exception):
    """Raised by `proc_exit` to unwind the guest; carries its exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"module called proc_exit({code})")
        self.code = code


@dataclass
class BoundedBuffer:
    """Keeps the first `cap` bytes written and counts what was dropped."""

    cap: int = LOG_CAP
    data: bytearray = field(default_factory=bytearray)
    dropped: int = 0

    def write(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        out = self.data.decode("utf-8", errors="replace")
        if self.dropped:
            out += f"\n[... {self.dropped} more bytes dropped]"
        return out


@dataclass
class HostContext:
    stdout: BoundedBuffer = field(default_factory=BoundedBuffer)
    stderr: BoundedBuffer = field(default_factory=BoundedBuffer)
    deadline: float = math.inf  # time.monotonic() at which the time limit ends


CURRENT: ContextVar[HostContext] = ContextVar("wasmq_host_context")
