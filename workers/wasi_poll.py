"""`poll_oneoff` for both WASI namespaces, bounded by the task's time limit.

wasmtime's own preview1 `poll_oneoff` sleeps in the host for as long as a
clock subscription asks (C's `sleep()`, `nanosleep()`), and epoch
interruption only stops wasm code, so a module asking for an hour would hold
its worker for an hour. This one sleeps only while the task's deadline allows
and fails the task with the time limit as soon as a sleep would cross it. It
takes at most `MAX_SUBSCRIPTIONS` subscriptions per call, so a module cannot
make the host copy millions of them outside its memory limit.

There are no files or sockets, so the only fds are stdio: stdin is at end of
file and stdout/stderr always take writes, which makes fd subscriptions ready
at once.

Layouts. preview1: subscription 48 bytes = userdata u64 @0, tag u8 @8, then
clock {id u32 @16, timeout u64 @24, precision u64 @32, flags u16 @40} or
fd_readwrite {fd u32 @16}. wasi_unstable (snapshot 0): subscription 56 bytes,
its clock has an `identifier` u64 first: clock {identifier u64 @16, id u32 @24,
timeout u64 @32, precision u64 @40, flags u16 @48}, fd_readwrite {fd u32 @16}.
Event, both: 32 bytes = userdata u64 @0, error u16 @8, type u8 @10, nbytes u64
@16, flags u16 @24.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import wasmtime

from wasmq.workers.hostctx import CURRENT, MAX_SUBSCRIPTIONS, HostLimitExceeded, OutOfTime
from wasmq.workers.wasi_unstable import (
    CLOCKS,
    EBADF,
    EINVAL,
    ESUCCESS,
    I32,
    _errno_result,
    _Mem,
    _u32,
    _WasiError,
)

NAMESPACE = "wasi_snapshot_preview1"
EVENT = struct.Struct("<QHB5xQH6x")
assert EVENT.size == 32

# One subscription, read as (userdata, tag, clock_id, fd, timeout, flags).
_Fields = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class Layout:
    call: str  # the qualified name, for messages
    subscription: struct.Struct
    fields: Callable[[tuple[int, ...]], _Fields]

    def subscriptions(self, raw: bytes) -> Iterator[_Fields]:
        for values in self.subscription.iter_unpack(raw):
            yield self.fields(values)


PREVIEW1 = Layout(f"{NAMESPACE}.poll_oneoff", struct.Struct("<QB7xIxxxxQQH6x"),
                  lambda v: (v[0], v[1], v[2], v[2], v[3], v[5]))
SNAPSHOT0 = Layout("wasi_unstable.poll_oneoff", struct.Struct("<QB7xI4xI4xQQH6x"),
                   lambda v: (v[0], v[1], v[3], v[2], v[4], v[6]))
assert PREVIEW1.subscription.size == 48 and SNAPSHOT0.subscription.size == 56

CLOCK, FD_READ, FD_WRITE = 0, 1, 2
ABSTIME = 1
HANGUP = 1


def _clock_wait_ns(clock_id: int, timeout: int, flags: int) -> int:
    clock = CLOCKS.get(clock_id)
    if clock is None:
        raise _WasiError(EINVAL)
    if flags & ABSTIME:
        return max(0, timeout - clock[0]())
    return timeout


def _fd_event(tag: int, fd: int) -> tuple[int, int, int]:
    """(error, nbytes, flags) for a stdio fd: always ready, never blocks."""
    if tag == FD_READ and fd == 0:
        return ESUCCESS, 0, HANGUP
    if tag == FD_WRITE and fd in (1, 2):
        return ESUCCESS, 0, 0
    return EBADF, 0, 0


def poll(caller: wasmtime.Caller, layout: Layout, in_ptr: int, out_ptr: int, nsubs: int,
         nevents_ptr: int) -> int:
    n = _u32(nsubs)
    if n == 0:
        raise _WasiError(EINVAL)
    if n > MAX_SUBSCRIPTIONS:
        raise HostLimitExceeded(layout.call, n, "subscriptions", MAX_SUBSCRIPTIONS)
    m = _Mem(caller)
    raw = m.read(in_ptr, n * layout.subscription.size)
    m._check(out_ptr, n * EVENT.size)
    m._check(nevents_ptr, 4)
    ready: list[bytes] = []
    clocks: list[tuple[int, int, int]] = []  # (wait_ns, userdata, error)
    for userdata, tag, clock_id, fd, timeout, flags in layout.subscriptions(raw):
        if tag == CLOCK:
            try:
                clocks.append((_clock_wait_ns(clock_id, timeout, flags), userdata, ESUCCESS))
            except _WasiError as exc:
                ready.append(EVENT.pack(userdata, exc.errno, tag, 0, 0))
        elif tag in (FD_READ, FD_WRITE):
            error, nbytes, fd_flags = _fd_event(tag, fd)
            ready.append(EVENT.pack(userdata, error, tag, nbytes, fd_flags))
        else:
            raise _WasiError(EINVAL)
    if not ready and clocks:
        wait_ns = min(c[0] for c in clocks)
        ctx = CURRENT.get()
        if time.monotonic() + wait_ns / 1e9 > ctx.deadline:
            raise OutOfTime(wait_ns / 1e9, layout.call)
        time.sleep(wait_ns / 1e9)
        ready = [EVENT.pack(userdata, error, CLOCK, 0, 0)
                 for w, userdata, error in clocks if w <= wait_ns]
    m.write(out_ptr, b"".join(ready))
    m.u32(nevents_ptr, len(ready))
    return ESUCCESS


def poll_oneoff(caller: wasmtime.Caller, in_ptr: int, out_ptr: int, nsubs: int,
                nevents_ptr: int) -> int:
    return poll(caller, PREVIEW1, in_ptr, out_ptr, nsubs, nevents_ptr)


def define_bounded_poll(linker: wasmtime.Linker) -> None:
    """Replace wasmtime's preview1 `poll_oneoff` on a linker that already has WASI."""
    linker.allow_shadowing = True
    try:
        linker.define_func(NAMESPACE, "poll_oneoff",
                           wasmtime.FuncType([I32, I32, I32, I32], [I32]),
                           _errno_result(poll_oneoff, PREVIEW1.call), access_caller=True)
    finally:
        linker.allow_shadowing = False
