"""Builds of uploads, each in a child process with a CPU-time and a memory limit.

A valid 500 KB module can cost minutes of CPU to compile, and 7.5 MB of nested
blocks gigabytes of memory (issue 14): compiling is untrusted work. So the
gateway never compiles. Each upload is built in a process of its own
(`python -m wasmq.toolchain.build`: about 80 ms to start with wasmtime
imported), which sets `RLIMIT_CPU` and `RLIMIT_AS` on itself before it reads a
byte of the upload; the kernel ends it at either limit, and the gateway kills it
past three times its CPU limit in wall time. Nothing is shared with the child
but its pipes, so killing it harms nothing else (no pool to break, unlike
`ProcessPoolExecutor`; no re-import of the gateway's main module, unlike
`multiprocessing`'s spawn and forkserver). The child reads its upload from the
file named on its stdin (uploads wait on disk: toolchain/spool.py), writes its
result to a file (a small msgpack header, then the module and its artifact as they
are: `_write_reply`), and runs in an empty folder of its own; the gateway maps that
file and stores the module and artifact from views of it, so a 600 MB module is
neither packed nor unpacked nor copied (it was seconds of each, and 2.4 GB of
memory, for VGG-19: issue 21); the gateway reaps it with
`wait4`, which says what it used: a SIGKILL that was neither the gateway's nor the
CPU limit's is the kernel's OOM killer, and is reported as memory. A gateway process runs at
most one build per core it has (`Builds.slots`), lets `WASMQ_COMPILE_QUEUE`
more wait for a slot, shared fairly across callers (`Builds`), and refuses the rest
at once.

The child decides what to build from the content (`build_content`): today a
`.wasm` is validated, compiled, checked against the ABI and serialized; an ONNX
model (told apart by its content) is first planned and packed into a module by
`wasmq.toolchain.model`, whose refusals name the operator, dimension or limit.

A `.wasm` upload's request thread waits for its child (`build`); a model's upload
is answered at once and its build runs on a thread of its own (`reserve`, then
`Reservation.start`: toolchain/jobs.py), within the same slots and queue.

What it cannot do: a client that hangs up does not stop its build early, but no
build outlives its limits. A build
killed for memory cannot say where it was; the message names the limit.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import mmap
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

import msgpack

from wasmq.broker import abi
from wasmq.broker.engine import make_engine
from wasmq.broker.errors import InvalidModule, Unavailable, WasmqError, cut_reason
from wasmq.broker.interpreter import python_module
from wasmq.broker.settings import MB, Settings, available_cores
from wasmq.toolchain.places import Places
from wasmq.toolchain.spool import InMemory, Spooled

log = logging.getLogger("wasmq.build")

# Wall time a build may take beyond its CPU limit before it is killed anyway: a
# child starved of CPU by a busy machine is not the module's fault, up to a point.
WALL_FACTOR, WALL_SLACK_S = 3, 2.0
# A build runs on one thread (the slots count cores): numpy's BLAS would start one per
# core in every build process, each with about 40 MB of address space under its limit.
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Built:
    # The module to store and serve at /file (for a model: the packed one), and its
    # Module.serialize() for workers with the same engine fingerprint: in the gateway,
    # views of the child's reply file (`_read_reply`), valid while this result lives.
    wasm: bytes | memoryview
    info: abi.ModuleInfo
    artifact: bytes | bytearray | memoryview
    kind: str = "wasm"  # "onnx" for a model packed into a module
    model: dict | None = None  # a model's inputs, outputs, operators and sizes
    # Gives back the bytes this result holds of the process's budget (Builds.memory):
    # call it (once) when the result is stored.
    release: Callable[[], None] = field(default=lambda: None, compare=False, repr=False)


@dataclass(frozen=True)
class _Module:
    wasm: bytes
    kind: str = "wasm"
    model: dict | None = None


def build_content(content: bytes, *, max_memory: int, max_module: int = 1 << 62) -> Built:
    """Build whatever was uploaded; runs in the child, under its limits."""
    started = time.perf_counter()
    source = _as_module(content, max_memory)
    planned = time.perf_counter()
    if len(source.wasm) > max_module:
        # A model packed into a module is bounded as an uploaded module is: a tiny model
        # could otherwise become one of any size (issue 22).
        raise InvalidModule(f"model refused: its built module would be {len(source.wasm)} "
                            f"bytes, over the module size limit of {max_module // MB} MB "
                            f"(WASMQ_MAX_MODULE_MB)")
    # One thread per build: the slots count cores, and wasmtime would otherwise
    # compile a module's functions on every core at once.
    module = abi.compile_module(make_engine(parallel_compilation=False), source.wasm)
    model = source.model
    if model is not None:  # how long the build took, said in the record (a big model's: s)
        model = {**model, "planMs": round((planned - started) * 1000),
                 "compileMs": round((time.perf_counter() - planned) * 1000)}
    return Built(source.wasm, abi.inspect_module(module), module.serialize(), source.kind,
                 model)


def _as_module(content: bytes, max_memory: int) -> _Module:
    """The WebAssembly module an upload stands for: itself, or a model packed into one
    whose memory fits the task memory limit."""
    if content.startswith(abi.WASM_MAGIC):
        return _Module(content)
    from wasmq.toolchain import model

    if not model.is_onnx(content):
        raise InvalidModule(_neither(content))
    try:
        built = model.build_model(content, max_bytes=max_memory)
    except model.ModelTooLarge as exc:
        raise InvalidModule(f"model refused: {exc}. {big_model_limits(exc.needed, len(content))}"
                            ) from None
    except model.ModelError as exc:
        raise InvalidModule(f"model refused: {exc}") from None
    return _Module(built.wasm, "onnx", built.describe())


# A pickle of protocol 2 to 5 starts with PROTO (0x80) and the protocol's number.
PICKLE_STARTS = {bytes([0x80, protocol]) for protocol in range(2, 6)}


def _neither(content: bytes) -> str:
    """What an upload that is neither of the two kinds is told: what was expected, and
    for a pickled model, how to send it instead."""
    expected = ("module refused: expected a WebAssembly module (a .wasm, starting with "
                "\\0asm) or an ONNX model")
    if content[:2] in PICKLE_STARTS:
        return (f"{expected}, got a Python pickle, which the server never unpickles: convert "
                f"a fitted scikit-learn model to ONNX on the client with "
                f"Client(url).deploy_model(fitted) (wasmq's Python client, with its sklearn "
                f"extra)")
    return f"{expected}; the file is neither (a truncated or damaged .onnx is neither, too)"


def big_model_limits(needed: int, upload: int) -> str:
    """The settings an operator raises to deploy a model this large, all in one
    sentence: each would otherwise refuse it in turn (issue 21: VGG-19, 548 MB)."""
    memory_mb = math.ceil(max(needed, upload) * 1.25 / MB)
    return (f"To serve it the operator raises WASMQ_MAX_MEMORY_MB (what a model and a task "
            f"may use) to more than {memory_mb}; a model this large also needs "
            f"WASMQ_MAX_MODULE_MB over its file and built module "
            f"(about {math.ceil(upload / MB)} MB each), WASMQ_COMPILE_MEMORY_MB to about "
            f"{math.ceil(7 * upload / MB) + 512} (the build holds the model, its weights and "
            f"the module at once), WASMQ_COMPILE_TIMEOUT to about "
            f"{max(10, math.ceil(upload / MB / 10))} s, and WASMQ_STORAGE_PER_CALLER_MB to "
            f"over about {3 * math.ceil(upload / MB)} MB with as much room in Redis "
            f"(WASMQ_REDIS_MAXMEMORY_MB): the store keeps the upload while it builds, then "
            f"the module and its compiled form")


def _serve(cpu_s: int, memory: int, max_memory: int, max_module: int, warm: bool) -> int:
    """The child: limits first, then the upload from the file named on stdin, the build
    to stdout. A warm child (a model's: `Builds._child`) imports the planner before
    anything else, while it waits as the spare, and its CPU limit counts from there.
    Its working directory is an empty folder of its own: nothing an upload names
    resolves to a file of the gateway's (issue 22)."""
    if warm:
        from wasmq.toolchain.model import planner  # noqa: F401 - onnx and numpy: ~1 s
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_s += math.ceil(usage.ru_utime + usage.ru_stime)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU at cpu_s
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    path = sys.stdin.buffer.readline().decode().rstrip("\n")
    if not path:  # the gateway went away while this was its spare
        os.rmdir(os.getcwd())  # its empty folder: nobody else removes it
        return 0
    try:
        # Under the limit too: a warm child has spent some of it on the planner.
        with open(path, "rb") as upload:
            content = upload.read()
        built = build_content(content, max_memory=max_memory, max_module=max_module)
        del content  # the upload, once built: not held while the reply is written
    except InvalidModule as exc:
        _write_reply(sys.stdout.buffer, {"refused": cut_reason(exc.message)})
        return 0
    except MemoryError:
        _write_reply(sys.stdout.buffer, {"memory": True})
        return 0
    # Outside the `try`: a reply that failed half written is not followed by another.
    _write_reply(sys.stdout.buffer, {"info": dataclasses.asdict(built.info),
                                     "kind": built.kind, "model": built.model},
                 built.wasm, built.artifact)
    return 0


# A reply: the header's length (8 bytes, big-endian), the header (msgpack: the build's
# description, or why it was refused; `wasm` and `artifact` the lengths of what follows),
# then the module and the artifact, each as it is.
HEADER_LENGTH = struct.Struct(">Q")


def _write_reply(out: BinaryIO, header: dict, wasm: bytes | memoryview = b"",
                 artifact: bytes | bytearray | memoryview = b"") -> None:
    head = msgpack.packb({**header, "wasm": len(wasm), "artifact": len(artifact)})
    out.write(HEADER_LENGTH.pack(len(head)))
    out.write(head)
    out.write(wasm)
    out.write(artifact)
    out.flush()


def _read_reply(out: BinaryIO, size: int) -> tuple[dict, memoryview, memoryview]:
    """The header, module and artifact of a reply file of `size` bytes; the two are
    views of the file mapped (the mapping ends when the last view goes). A reply that
    is not whole reads as an empty header."""
    empty = memoryview(b"")
    if size < HEADER_LENGTH.size:
        return {}, empty, empty
    view = memoryview(mmap.mmap(out.fileno(), size, prot=mmap.PROT_READ))
    (length,) = HEADER_LENGTH.unpack(view[:HEADER_LENGTH.size])
    at = HEADER_LENGTH.size + length
    header = _unpack(bytes(view[HEADER_LENGTH.size:at])) if at <= size else {}
    wasm, artifact = header.get("wasm", 0), header.get("artifact", 0)
    if not (isinstance(wasm, int) and isinstance(artifact, int)
            and 0 <= wasm and 0 <= artifact and at + wasm + artifact == size):
        return {}, empty, empty
    return header, view[at:at + wasm], view[at + wasm:size]


@dataclass
class _Child:
    """A build process, with the files it writes to and the empty folder it runs in."""

    popen: subprocess.Popen
    out: BinaryIO
    err: BinaryIO
    workdir: str

    def discard(self) -> None:
        if self.popen.returncode is None:
            self.popen.kill()
            _reap(self.popen)
        for file in (self.out, self.err):
            file.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _reap(popen: subprocess.Popen) -> resource.struct_rusage:
    """Wait for the process, and what it used (CPU, peak memory), which Popen does not say."""
    _, status, usage = os.wait4(popen.pid, 0)
    popen.returncode = os.waitstatus_to_exitcode(status)
    return usage


class Builds:
    """A gateway process's builds: at most `slots` at once, `queue` more waiting, the
    places shared fairly across callers (toolchain/places.py)."""

    def __init__(self, settings: Settings) -> None:
        self.timeout_s = settings.compile_timeout
        self.memory_mb = settings.compile_memory_mb
        self.max_memory = settings.max_memory_mb * MB  # what a built model may use
        self.max_module = settings.max_module_mb * MB
        self.places = Places(max(1, available_cores() // max(1, settings.gateway_processes)),
                             settings.compile_queue, settings.compile_per_caller)
        # Uploads and build results held in memory at once (toolchain/spool.py).
        self.memory = InMemory(4 * self.max_module)
        self._lock = threading.Lock()
        self._spare: _Child | None = None  # a warm child for the next model

    @property
    def slots(self) -> int:
        return self.places.slots

    def build(self, upload: Spooled, caller: str = "") -> Built:
        """Build in this thread, waiting for a slot (BuildsBusy past the queue)."""
        reservation = self.reserve(caller)
        try:
            with self.places.slot(caller):
                return self._run(upload, warm=False)
        finally:
            reservation.cancel()

    def reserve(self, caller: str = "") -> Reservation:
        """A place among the builds running or waiting, or BuildsBusy at once: taken
        before anything is stored, so a refused upload leaves nothing behind."""
        self.places.admit(caller)
        return Reservation(self, caller)

    def _background(self, reservation: Reservation, upload: Spooled,
                    done: Callable[[Built | None, Exception | None], None]) -> None:
        built: Built | None = None
        error: Exception | None = None
        try:
            with self.places.slot(reservation.caller):
                built = self._run(upload, warm=True)
        except Exception as exc:  # noqa: BLE001 - the build's outcome, told to done
            error = exc
        finally:
            reservation.cancel()  # the place is free before the result is stored
        done(built, error)

    def _spawn(self, *, warm: bool) -> _Child:
        argv = python_module(__name__, str(max(1, math.ceil(self.timeout_s))),
                             str(self.memory_mb * MB), str(self.max_memory),
                             str(self.max_module), "warm" if warm else "cold")
        workdir = tempfile.mkdtemp(prefix="wasmq-build-")
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                 cwd=workdir, env={**os.environ, **ONE_THREAD})
        return _Child(popen, out, err, workdir)

    def start_spare(self) -> None:
        """Start the spare now if there is none: a model's upload takes seconds to
        store (VGG-19's: 8 s), while which the spare imports the planner, instead of
        after it (a second or more on the way to `ready`)."""
        with self._lock:
            old = self._spare
            if old is not None and old.popen.poll() is None:
                return
            self._spare = self._spawn(warm=True)
        if old is not None:
            old.discard()

    def _child(self, *, warm: bool) -> _Child:
        """A process for one build. A model's takes the spare, which has already spent
        the second of importing onnx and numpy, and leaves a new spare for the next
        model (one per gateway process once it has built a model, about 56 MB, idle
        on its stdin; it exits when the gateway does and its pipe closes)."""
        if not warm:
            return self._spawn(warm=False)
        with self._lock:
            child, self._spare = self._spare, self._spawn(warm=True)
        if child is None or child.popen.poll() is not None:
            if child is not None:
                child.discard()
            child = self._spawn(warm=True)
        return child

    def _run(self, upload: Spooled, *, warm: bool = False) -> Built:
        child = self._child(warm=warm)
        over_time = threading.Event()

        def stop() -> None:
            over_time.set()
            child.popen.kill()

        timer = threading.Timer(self.timeout_s * WALL_FACTOR + WALL_SLACK_S, stop)
        timer.daemon = True  # a stopping gateway does not wait for it
        timer.start()
        started = time.perf_counter()
        try:
            try:
                child.popen.stdin.write(upload.path.encode() + b"\n")
                child.popen.stdin.close()
            except OSError:
                pass  # it died already: its status says how
            usage = _reap(child.popen)
            timer.cancel()
            child.out.seek(0, os.SEEK_END)
            size = child.out.tell()
            child.err.seek(max(0, child.err.seek(0, os.SEEK_END) - 2000))
            err = child.err.read()
            built = self._outcome(child, size, err, usage, over_time.is_set())
            if built.model is None:
                return built
            # What the build process took in all (planning and compiling, as the model
            # says, then writing its reply), for the record (broker/builds.py).
            return dataclasses.replace(built, model={
                **built.model, "buildMs": round((time.perf_counter() - started) * 1000)})
        finally:
            timer.cancel()
            child.discard()

    def _outcome(self, child: _Child, size: int, err: bytes, usage: resource.struct_rusage,
                 over_time: bool) -> Built:
        code = child.popen.returncode
        cpu = usage.ru_utime + usage.ru_stime
        if over_time or code == -signal.SIGXCPU or (code == -signal.SIGKILL
                                                     and cpu >= self.timeout_s):
            raise self._over_time()
        if code == 0:
            self.memory.take(size)
            try:
                reply, wasm, artifact = _read_reply(child.out, size)
            except BaseException:
                self.memory.give(size)
                raise
            if "info" in reply:
                return Built(wasm, abi.ModuleInfo(**reply["info"]), artifact,
                             reply.get("kind", "wasm"), reply.get("model"),
                             lambda: self.memory.give(size))
            del wasm, artifact
            self.memory.give(size)
        else:
            reply = {}
        if "refused" in reply:
            raise InvalidModule(cut_reason(reply["refused"]))
        if code == -signal.SIGKILL:
            # Not this gateway's kill, not the CPU limit: the kernel's OOM killer, which
            # ends a process when the machine (or its container) has no memory left,
            # before the build reaches its own limit.
            raise InvalidModule(
                f"module refused: the build process was killed by the system for memory "
                f"(out of memory at {usage.ru_maxrss // 1024} MB, under the compile memory "
                f"limit of {self.memory_mb} MB, WASMQ_COMPILE_MEMORY_MB): this server has "
                f"less memory than its builds may take; an operator should lower "
                f"WASMQ_COMPILE_MEMORY_MB (or WASMQ_COMPILE_QUEUE) or give the server "
                f"more memory")
        # Python's MemoryError outside the build (packing its reply, say) ends it with 1.
        if "memory" in reply or b"memory allocation" in err or b"\nMemoryError" in err or \
                code in (-signal.SIGABRT, -signal.SIGSEGV):
            # Rust aborts when an allocation fails under RLIMIT_AS.
            raise InvalidModule(f"module refused: compiling it needs more memory than the "
                                f"compile memory limit of {self.memory_mb} MB "
                                f"(WASMQ_COMPILE_MEMORY_MB)")
        if code == -signal.SIGTERM:  # the gateway is stopping, and its children with it
            raise Unavailable("the gateway stopped while it built this upload; send it again "
                              "(another gateway, or this one once it is back, builds it)")
        log.error("build process ended with %s: %s", code, err.decode(errors="replace"))
        raise WasmqError(f"the build of this upload ended unexpectedly (exit code "
                         f"{code}); it has been logged")

    def _over_time(self) -> InvalidModule:
        return InvalidModule(f"module refused: compiling it took longer than the compile "
                             f"time limit of {self.timeout_s:g} s (WASMQ_COMPILE_TIMEOUT)")


class Reservation:
    """One admitted build: run it in the background with `start`, or give the place
    back with `cancel` (once; later calls do nothing)."""

    def __init__(self, builds: Builds, caller: str = "") -> None:
        self._builds, self.caller = builds, caller
        self._held = True
        self._lock = threading.Lock()

    def start(self, upload: Spooled,
              done: Callable[[Built | None, Exception | None], None]) -> threading.Thread:
        """Build `upload` on a thread of its own once a slot is free; `done` gets the
        build or the exception that ended it, on that thread."""
        thread = threading.Thread(target=self._builds._background, args=(self, upload, done),
                                  name="wasmq-build", daemon=True)
        thread.start()
        return thread

    def cancel(self) -> None:
        with self._lock:
            held, self._held = self._held, False
        if held:
            self._builds.places.leave(self.caller)

def _unpack(out: bytes) -> dict:
    try:
        reply = msgpack.unpackb(out)
    except (ValueError, msgpack.UnpackException):
        return {}
    return reply if isinstance(reply, dict) else {}


if __name__ == "__main__":
    sys.exit(_serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                    sys.argv[5] == "warm"))
