"""Per-task host state that WASI host functions reach without globals.

A worker process runs one task at a time, but the legacy `wasi_unstable` host
functions are defined once per linker and must write into the *current* task's
captured stdout/stderr. A ContextVar carries that task state to them.

Host calls run outside wasm, where neither epoch interruption nor the memory
limit reaches: a call that copied an unbounded list (28 M iovecs, 3 M poll
subscriptions) would spend the worker's memory and time on the module's behalf.
So every call wasmq implements takes at most the `MAX_*` counts below (a
module past them fails its task, naming the call and the limit) and checks the
task's deadline on entry and exit (`HostContext.check_deadline`).
"""

from __future__ import annotations

import math
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

LOG_CAP = 64 * 1024
# Linux's IOV_MAX: what writev/readv accept, so no libc sends more per call.
MAX_IOVECS = 1024
# Subscriptions per poll_oneoff: with only stdio and clocks, a real program needs a few.
MAX_SUBSCRIPTIONS = 1024
# random_get fills a large buffer in pieces of this size, checking the deadline between them.
RANDOM_CHUNK = 64 * 1024


class OutOfTime(Exception):
    """Raised by a host function that would block, or has run, past the task's deadline."""

    def __init__(self, asked_s: float | None = None, call: str | None = None) -> None:
        super().__init__(f"module asked to wait {asked_s:g} s" if asked_s is not None
                         else f"time limit reached in {call}")
        self.asked_s = asked_s
        self.call = call


class HostLimitExceeded(Exception):
    """A host call asked for more than one call may take; it fails the task."""

    def __init__(self, call: str, asked: int, what: str, limit: int) -> None:
        super().__init__(f"{call} was called with {asked:,} {what}, over the limit of "
                         f"{limit:,} per call")
        self.call = call


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

    def check_deadline(self, call: str) -> None:
        """Fail the task in this host call once its time limit has passed."""
        if time.monotonic() > self.deadline:
            raise OutOfTime(call=call)


CURRENT: ContextVar[HostContext] = ContextVar("wasmq_host_context")
