"""The legacy WASI namespace `wasi_unstable` (a.k.a. snapshot 0) as host functions.

wasmtime-py only provides `wasi_snapshot_preview1` (`Linker.define_wasi`), but
binaries built by 2019-2020 toolchains (wasienv, early wasi-sdk; the Scailable
tutorial's own example) import `wasi_unstable`. Our sandbox needs very little of
WASI (no files, no args, no env, captured stdio), so we implement that little in
Python rather than refuse those modules.

Differences from preview1 that matter here (the rest, incl. errno values, the
fdstat layout and the rights bits, is the same):

* `fd_seek` whence: CUR=0, END=1, SET=2 (preview1: SET=0, CUR=1, END=2).
* `filestat` is 56 bytes with a 32-bit `nlink` (preview1: 64 bytes, u64 nlink).

Host functions find the running task's stdout/stderr through
`workers.hostctx.CURRENT`, so one linker serves every task of a worker.

Signatures (all params/results i32 unless noted; every function but proc_exit
returns an errno):

    args_get(argv, argv_buf)            args_sizes_get(argc_ptr, size_ptr)
    environ_get(env, env_buf)           environ_sizes_get(count_ptr, size_ptr)
    clock_res_get(id, res_ptr)          clock_time_get(id, precision:i64, time_ptr)
    fd_close(fd)                        fd_fdstat_get(fd, buf)
    fd_filestat_get(fd, buf)            fd_prestat_get(fd, buf)
    fd_prestat_dir_name(fd, path, len)  fd_read(fd, iovs, iovs_len, nread_ptr)
    fd_seek(fd, offset:i64, whence, newoffset_ptr)    fd_tell(fd, offset_ptr)
    fd_write(fd, iovs, iovs_len, nwritten_ptr)
    path_open(dirfd, dirflags, path, path_len, oflags, rights_base:i64,
              rights_inheriting:i64, fdflags, fd_ptr)
    poll_oneoff(in, out, nsubscriptions, nevents_ptr)
    proc_exit(code) -> ()               random_get(buf, len)
    sched_yield()
"""

from __future__ import annotations

import functools
import os
import struct
import time
import weakref
from collections.abc import Callable

import wasmtime

from wasmq.workers.hostctx import (
    CURRENT,
    MAX_IOVECS,
    RANDOM_CHUNK,
    BoundedBuffer,
    HostContext,
    HostLimitExceeded,
    ModuleExit,
)

NAMESPACE = "wasi_unstable"

# errno (identical in wasi_unstable and wasi_snapshot_preview1)
ESUCCESS, EBADF, EFAULT, EINVAL, ENOSYS, ESPIPE, ENOTCAPABLE = 0, 8, 21, 28, 52, 70, 76

# fd_seek whence in wasi_unstable. preview1 renumbered these (SET=0, CUR=1, END=2),
# so a module built for one namespace must never be decoded with the other's table.
OLD_WHENCE: dict[int, str] = {0: "CUR", 1: "END", 2: "SET"}

FILETYPE_CHARACTER_DEVICE = 2
RIGHT_FD_READ = 1 << 1
RIGHT_FD_WRITE = 1 << 6
RIGHT_FD_FILESTAT_GET = 1 << 21
RIGHT_POLL_FD_READWRITE = 1 << 27
# No FD_SEEK/FD_TELL right: wasi-libc's isatty() treats such a char device as a tty.
STDIO_RIGHTS = {
    0: RIGHT_FD_READ | RIGHT_FD_FILESTAT_GET | RIGHT_POLL_FD_READWRITE,
    1: RIGHT_FD_WRITE | RIGHT_FD_FILESTAT_GET | RIGHT_POLL_FD_READWRITE,
    2: RIGHT_FD_WRITE | RIGHT_FD_FILESTAT_GET | RIGHT_POLL_FD_READWRITE,
}

# fdstat (24 bytes): u8 filetype @0, u16 flags @2, u64 rights_base @8,
# u64 rights_inheriting @16.
FDSTAT = struct.Struct("<BxHxxxxQQ")
# Old filestat (56 bytes): u64 dev @0, u64 ino @8, u8 filetype @16, u32 nlink @20,
# u64 size @24, u64 atim @32, u64 mtim @40, u64 ctim @48.
OLD_FILESTAT = struct.Struct("<QQBxxxIQQQQ")
assert FDSTAT.size == 24 and OLD_FILESTAT.size == 56

# clock ids: REALTIME, MONOTONIC, PROCESS_CPUTIME_ID, THREAD_CPUTIME_ID
CLOCKS: dict[int, tuple[Callable[[], int], str]] = {
    0: (time.time_ns, "time"),
    1: (time.monotonic_ns, "monotonic"),
    2: (time.process_time_ns, "process_time"),
    3: (time.thread_time_ns, "thread_time"),
}

I32, I64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()


class _WasiError(Exception):
    """Raised inside a host function to return an errno to the guest."""

    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = errno


def _u32(v: int) -> int:
    """wasmtime-py hands i32 params over as signed ints; pointers are unsigned."""
    return v & 0xFFFFFFFF


class _Mem:
    """Bounds-checked view of the caller's memory: a bad pointer is EFAULT."""

    def __init__(self, caller: wasmtime.Caller) -> None:
        mem = caller.get("memory")
        if not isinstance(mem, wasmtime.Memory):
            raise _WasiError(EFAULT)
        self.caller, self.mem, self.size = caller, mem, mem.data_len(caller)

    def _check(self, ptr: int, n: int) -> int:
        # Memory.read/write follow slice rules (negative = from the end, reads
        # clamp silently), so check everything ourselves.
        ptr = _u32(ptr)
        if ptr + n > self.size:
            raise _WasiError(EFAULT)
        return ptr

    def read(self, ptr: int, n: int) -> bytes:
        ptr = self._check(ptr, n)
        return bytes(self.mem.read(self.caller, ptr, ptr + n)) if n else b""

    def write(self, ptr: int, data: bytes) -> None:
        ptr = self._check(ptr, len(data))
        if data:
            self.mem.write(self.caller, data, ptr)

    def u32(self, ptr: int, value: int) -> None:
        self.write(ptr, struct.pack("<I", value & 0xFFFFFFFF))

    def u64(self, ptr: int, value: int) -> None:
        self.write(ptr, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))

    def iovecs(self, iovs: int, count: int, call: str) -> list[tuple[int, int]]:
        """(ptr u32, len u32) pairs, each checked against the memory bounds."""
        if _u32(count) > MAX_IOVECS:
            raise HostLimitExceeded(call, _u32(count), "iovecs", MAX_IOVECS)
        raw = self.read(iovs, 8 * _u32(count))
        pairs = list(struct.iter_unpack("<II", raw))
        for ptr, n in pairs:
            self._check(ptr, n)
        return pairs


def _ctx() -> HostContext:
    ctx = CURRENT.get(None)
    if ctx is None:  # a bug in the worker, not in the module: fail loudly
        raise RuntimeError("wasi_unstable: no HostContext set in workers.hostctx.CURRENT")
    return ctx


def _errno_result(fn: Callable[..., int | None], call: str) -> Callable[..., int | None]:
    """Turn `_WasiError` into the function's return value (ModuleExit passes through),
    and fail the task in `call` (e.g. "wasi_unstable.fd_write") once its deadline
    has passed, on the way in and on the way out: wasm's epoch interruption would
    only notice at the next function entry, and blame whatever runs there."""

    @functools.wraps(fn)
    def wrapper(*args: object) -> int | None:
        ctx = CURRENT.get(None)
        if ctx is not None:
            ctx.check_deadline(call)
        try:
            return fn(*args)
        except _WasiError as e:
            return e.errno
        finally:
            if ctx is not None:
                ctx.check_deadline(call)

    return wrapper


def _stdio(fd: int) -> int:
    if fd not in (0, 1, 2):
        raise _WasiError(EBADF)
    return fd


# --- the host functions (first argument is always the wasmtime.Caller) -------


def args_sizes_get(caller: wasmtime.Caller, count_ptr: int, size_ptr: int) -> int:
    m = _Mem(caller)
    m.u32(count_ptr, 0)
    m.u32(size_ptr, 0)
    return ESUCCESS


def args_get(caller: wasmtime.Caller, argv: int, argv_buf: int) -> int:
    return ESUCCESS  # zero entries: nothing to write


def fd_write(caller: wasmtime.Caller, fd: int, iovs: int, iovs_len: int, nwritten_ptr: int) -> int:
    if fd not in (1, 2):
        raise _WasiError(EBADF)
    ctx = _ctx()
    buf: BoundedBuffer = ctx.stdout if fd == 1 else ctx.stderr
    m = _Mem(caller)
    m._check(nwritten_ptr, 4)  # fail before any output is taken
    total = 0
    for ptr, n in m.iovecs(iovs, iovs_len, f"{NAMESPACE}.fd_write"):
        keep = min(n, max(0, buf.cap - len(buf.data)))  # copy only what we keep
        buf.write(m.read(ptr, keep))
        buf.dropped += n - keep
        total += n
    m.u32(nwritten_ptr, total)
    return ESUCCESS


def fd_read(caller: wasmtime.Caller, fd: int, iovs: int, iovs_len: int, nread_ptr: int) -> int:
    if fd != 0:
        raise _WasiError(EBADF)
    m = _Mem(caller)
    m.iovecs(iovs, iovs_len, f"{NAMESPACE}.fd_read")
    m.u32(nread_ptr, 0)  # stdin is empty: immediate EOF
    return ESUCCESS


def fd_close(caller: wasmtime.Caller, fd: int) -> int:
    _stdio(fd)  # closing stdio is a harmless no-op
    return ESUCCESS


def fd_seek(caller: wasmtime.Caller, fd: int, offset: int, whence: int, newoffset_ptr: int) -> int:
    _stdio(fd)
    if _u32(whence) not in OLD_WHENCE:
        raise _WasiError(EINVAL)
    raise _WasiError(ESPIPE)  # stdio is a pipe/char device; there are no other fds


def fd_tell(caller: wasmtime.Caller, fd: int, offset_ptr: int) -> int:
    _stdio(fd)
    raise _WasiError(ESPIPE)


def fd_fdstat_get(caller: wasmtime.Caller, fd: int, buf: int) -> int:
    _stdio(fd)
    _Mem(caller).write(buf, FDSTAT.pack(FILETYPE_CHARACTER_DEVICE, 0, STDIO_RIGHTS[fd], 0))
    return ESUCCESS


def fd_filestat_get(caller: wasmtime.Caller, fd: int, buf: int) -> int:
    _stdio(fd)
    _Mem(caller).write(buf, OLD_FILESTAT.pack(0, 0, FILETYPE_CHARACTER_DEVICE, 0, 0, 0, 0, 0))
    return ESUCCESS


def fd_prestat_get(caller: wasmtime.Caller, fd: int, buf: int) -> int:
    return EBADF  # no preopened directories: ends wasi-libc's preopen scan at fd 3


def fd_prestat_dir_name(caller: wasmtime.Caller, fd: int, path: int, path_len: int) -> int:
    return EBADF


def path_open(
    caller: wasmtime.Caller,
    dirfd: int,
    dirflags: int,
    path: int,
    path_len: int,
    oflags: int,
    rights_base: int,
    rights_inheriting: int,
    fdflags: int,
    fd_ptr: int,
) -> int:
    return EBADF if dirfd not in (0, 1, 2) else ENOTCAPABLE  # no filesystem at all


def proc_exit(caller: wasmtime.Caller, code: int) -> None:
    raise ModuleExit(code)  # wasmtime-py re-raises it from the outermost call


def clock_time_get(caller: wasmtime.Caller, clock_id: int, precision: int, time_ptr: int) -> int:
    clock = CLOCKS.get(_u32(clock_id))
    if clock is None:
        raise _WasiError(EINVAL)
    _Mem(caller).u64(time_ptr, clock[0]())
    return ESUCCESS


def clock_res_get(caller: wasmtime.Caller, clock_id: int, res_ptr: int) -> int:
    clock = CLOCKS.get(_u32(clock_id))
    if clock is None:
        raise _WasiError(EINVAL)
    res_ns = max(1, round(time.get_clock_info(clock[1]).resolution * 1e9))
    _Mem(caller).u64(res_ptr, res_ns)
    return ESUCCESS


def random_get(caller: wasmtime.Caller, buf: int, buf_len: int) -> int:
    m = _Mem(caller)
    n = _u32(buf_len)
    ptr = m._check(buf, n)  # before any random byte is made
    ctx = _ctx()
    for at in range(ptr, ptr + n, RANDOM_CHUNK):  # never n bytes at once in the host
        ctx.check_deadline(f"{NAMESPACE}.random_get")
        m.write(at, os.urandom(min(RANDOM_CHUNK, ptr + n - at)))
    return ESUCCESS


def sched_yield(caller: wasmtime.Caller) -> int:
    return ESUCCESS


def poll_oneoff(
    caller: wasmtime.Caller, in_ptr: int, out_ptr: int, nsubs: int, nevents_ptr: int
) -> int:
    # wasi_poll builds on this module's helpers, so it is imported when first used.
    from wasmq.workers.wasi_poll import SNAPSHOT0, poll

    return poll(caller, SNAPSHOT0, in_ptr, out_ptr, nsubs, nevents_ptr)


_Sig = tuple[Callable[..., "int | None"], list[wasmtime.ValType], list[wasmtime.ValType]]
_FUNCS: dict[str, _Sig] = {
    "args_get": (args_get, [I32, I32], [I32]),
    "args_sizes_get": (args_sizes_get, [I32, I32], [I32]),
    "environ_get": (args_get, [I32, I32], [I32]),  # same shape, also empty
    "environ_sizes_get": (args_sizes_get, [I32, I32], [I32]),
    "fd_write": (fd_write, [I32, I32, I32, I32], [I32]),
    "fd_read": (fd_read, [I32, I32, I32, I32], [I32]),
    "fd_close": (fd_close, [I32], [I32]),
    "fd_seek": (fd_seek, [I32, I64, I32, I32], [I32]),
    "fd_tell": (fd_tell, [I32, I32], [I32]),
    "fd_fdstat_get": (fd_fdstat_get, [I32, I32], [I32]),
    "fd_filestat_get": (fd_filestat_get, [I32, I32], [I32]),
    "fd_prestat_get": (fd_prestat_get, [I32, I32], [I32]),
    "fd_prestat_dir_name": (fd_prestat_dir_name, [I32, I32, I32], [I32]),
    "path_open": (path_open, [I32, I32, I32, I32, I32, I64, I64, I32, I32], [I32]),
    "proc_exit": (proc_exit, [I32], []),
    "clock_time_get": (clock_time_get, [I32, I64, I32], [I32]),
    "clock_res_get": (clock_res_get, [I32, I32], [I32]),
    "random_get": (random_get, [I32, I32], [I32]),
    "sched_yield": (sched_yield, [], [I32]),
    "poll_oneoff": (poll_oneoff, [I32, I32, I32, I32], [I32]),
}

IMPLEMENTED: frozenset[str] = frozenset(_FUNCS)

# Names already defined under NAMESPACE, per linker: a Linker refuses to define
# a name twice (shadowing is off), and it cannot be asked what it holds without a store.
_DEFINED: weakref.WeakKeyDictionary[wasmtime.Linker, set[str]] = weakref.WeakKeyDictionary()


def define_wasi_unstable(linker: wasmtime.Linker) -> None:
    """Define every function we implement under 'wasi_unstable' on the linker (once per linker).

    Store-independent (`define_func`), so one linker serves every task of a
    worker; per-task state comes from `workers.hostctx.CURRENT`. Calling it again
    on the same linker does nothing.
    """
    defined = _DEFINED.setdefault(linker, set())
    for name, (fn, params, results) in _FUNCS.items():
        if name in defined:
            continue
        linker.define_func(
            NAMESPACE,
            name,
            wasmtime.FuncType(params, results),
            _errno_result(fn, f"{NAMESPACE}.{name}"),
            access_caller=True,
        )
        defined.add(name)


def _stub(results: list[wasmtime.ValType]) -> Callable[..., float | list[float] | None]:
    floats = (wasmtime.ValType.f32(), wasmtime.ValType.f64())
    zeros: list[float] = [0.0 if t in floats else 0 for t in results]
    if results and results[0] == I32:
        zeros[0] = ENOSYS

    def stub(*_args: object) -> float | list[float] | None:
        if not zeros:
            return None
        return zeros[0] if len(zeros) == 1 else list(zeros)

    return stub


def define_missing_stubs(linker: wasmtime.Linker, module: wasmtime.Module) -> None:
    """Stub every wasi_unstable function `module` imports that we do not implement.

    Each stub has the import's own FuncType and returns errno ENOSYS (52), or
    nothing if it has no results. Idempotent per linker: names already defined
    are skipped, and names in IMPLEMENTED are never stubbed (they belong to
    `define_wasi_unstable`, whichever is called first).

    Old libcs import functions they never call on our path (sock_*, path_*,
    fd_readdir...); a stub lets such modules instantiate, and a call just fails
    the way a sandbox without that capability should. Non-function imports are
    left alone, so instantiation reports them.
    """
    defined = _DEFINED.setdefault(linker, set())
    for imp in module.imports:
        ty = imp.type
        if imp.module != NAMESPACE or imp.name is None:
            continue
        if imp.name in defined or imp.name in IMPLEMENTED:
            continue
        if not isinstance(ty, wasmtime.FuncType):
            continue
        linker.define_func(NAMESPACE, imp.name, ty, _stub(list(ty.results)))
        defined.add(imp.name)
