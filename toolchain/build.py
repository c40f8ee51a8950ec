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
`multiprocessing`'s spawn and forkserver). A gateway process runs at
most one build per core it has (`Builds.slots`), lets `WASMQ_COMPILE_QUEUE`
more wait for a slot, and refuses the rest at once.

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
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgpack

from wasmq.broker import abi
from wasmq.broker.engine import make_engine
from wasmq.broker.errors import BuildsBusy, InvalidModule, WasmqError
from wasmq.broker.settings import MB, Settings, available_cores

log = logging.getLogger("wasmq.build")

# Wall time a build may take beyond its CPU limit before it is killed anyway: a
# child starved of CPU by a busy machine is not the module's fault, up to a point.
WALL_FACTOR, WALL_SLACK_S = 3, 2.0
# A build runs on one thread (the slots count cores): numpy's BLAS would start one per
# core in every build process, each with about 40 MB of address space under its limit.
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Built:
    wasm: bytes  # the module to store and serve at /file (for a model: the packed one)
    info: abi.ModuleInfo
    artifact: bytes  # Module.serialize(), for workers with the same engine fingerprint
    kind: str = "wasm"  # "onnx" for a model packed into a module
    model: dict | None = None  # a model's inputs, outputs, operators and sizes


@dataclass(frozen=True)
class _Module:
    wasm: bytes
    kind: str = "wasm"
    model: dict | None = None


def build_content(content: bytes, *, max_memory: int) -> Built:
    """Build whatever was uploaded; runs in the child, under its limits."""
    started = time.perf_counter()
    source = _as_module(content, max_memory)
    planned = time.perf_counter()
    # One thread per build: the slots count cores, and wasmtime would otherwise
    # compile a module's functions on every core at once.
    module = abi.compile_module(make_engine(parallel_compilation=False), source.wasm)
    model = source.model
    if model is not None:  # how long the build took, said in the record (a big model's: s)
        model = {**model, "planMs": round((planned - started) * 1000),
                 "compileMs": round((time.perf_counter() - planned) * 1000)}
    return Built(source.wasm, abi.inspect_module(module), bytes(module.serialize()),
                 source.kind, model)


def _as_module(content: bytes, max_memory: int) -> _Module:
    """The WebAssembly module an upload stands for: itself, or a model packed into one
    whose memory fits the task memory limit."""
    if content.startswith(abi.WASM_MAGIC):
        return _Module(content)
    from wasmq.toolchain import model

    if not model.is_onnx(content):
        return _Module(content)  # compile_module names what is wrong with it
    try:
        built = model.build_model(content, max_bytes=max_memory)
    except model.ModelTooLarge as exc:
        raise InvalidModule(f"model refused: {exc}. {big_model_limits(exc.needed, len(content))}"
                            ) from None
    except model.ModelError as exc:
        raise InvalidModule(f"model refused: {exc}") from None
    return _Module(built.wasm, "onnx", built.describe())


def big_model_limits(needed: int, upload: int) -> str:
    """The settings an operator raises to deploy a model this large, all in one
    sentence: each would otherwise refuse it in turn (issue 21: VGG-19, 548 MB)."""
    memory_mb = math.ceil(max(needed, upload) * 1.25 / MB)
    return (f"To serve it the operator raises WASMQ_MAX_MEMORY_MB (what a model and a task "
            f"may use) to more than {memory_mb}; a model this large also needs "
            f"WASMQ_MAX_MODULE_MB over its file and built module "
            f"(about {math.ceil(upload / MB)} MB each), WASMQ_COMPILE_MEMORY_MB to about "
            f"{math.ceil(7 * upload / MB) + 512} (the build holds the model, its weights and "
            f"the module at once) and WASMQ_COMPILE_TIMEOUT to about "
            f"{max(10, math.ceil(upload / MB / 10))} s")


def _serve(cpu_s: int, memory: int, max_memory: int, warm: bool) -> int:
    """The child: limits first, then the upload from stdin, the build to stdout. A warm
    child (a model's: `Builds._child`) imports the planner before anything else, while
    it waits as the spare, and its CPU limit counts from there."""
    if warm:
        from wasmq.toolchain.model import planner  # noqa: F401 - onnx and numpy: ~1 s
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_s += math.ceil(usage.ru_utime + usage.ru_stime)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU at cpu_s
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    try:
        # Under the limit too: a warm child has spent some of it on the planner.
        content = sys.stdin.buffer.read()
        built = build_content(content, max_memory=max_memory)
        reply = {"wasm": built.wasm, "artifact": built.artifact,
                 "info": dataclasses.asdict(built.info), "kind": built.kind,
                 "model": built.model}
    except InvalidModule as exc:
        reply = {"refused": exc.message}
    except MemoryError:
        reply = {"memory": True}
    sys.stdout.buffer.write(msgpack.packb(reply))
    sys.stdout.buffer.flush()
    return 0


class Builds:
    """A gateway process's builds: at most `slots` at once, `queue` more waiting."""

    def __init__(self, settings: Settings) -> None:
        self.timeout_s = settings.compile_timeout
        self.memory_mb = settings.compile_memory_mb
        self.max_memory = settings.max_memory_mb * MB  # what a built model may use
        self.slots = max(1, available_cores() // max(1, settings.gateway_processes))
        self.queue = settings.compile_queue
        self.per_caller = settings.compile_per_caller
        self._by_caller: dict[str, int] = {}  # building or waiting, per caller
        self._free = threading.Semaphore(self.slots)
        self._lock = threading.Lock()
        self._admitted = 0  # building or waiting for a slot
        self._spare: subprocess.Popen | None = None  # a warm child for the next model

    def build(self, content: bytes, caller: str = "") -> Built:
        """Build in this thread, waiting for a slot (BuildsBusy past the queue)."""
        reservation = self.reserve(caller)
        try:
            with self._free:
                return self._run(content)
        finally:
            reservation.cancel()

    def reserve(self, caller: str = "") -> Reservation:
        """A place among the builds running or waiting, or BuildsBusy at once: taken
        before anything is stored, so a refused upload leaves nothing behind. A
        `caller` (a client's identity; "" for the server's own resumed builds) holds
        at most `per_caller` of the places."""
        with self._lock:
            if self._admitted >= self.slots + self.queue:
                raise BuildsBusy(
                    f"the server is building {self.slots} uploads and {self.queue} more are "
                    f"waiting (WASMQ_COMPILE_QUEUE); send this one again in a few seconds")
            held = self._by_caller.get(caller, 0)
            if caller and held >= self.per_caller:
                raise BuildsBusy(
                    f"this client already has {held} uploads building or waiting to be "
                    f"built (WASMQ_COMPILE_PER_CALLER={self.per_caller}); send this one "
                    f"again once one of them is done")
            self._admitted += 1
            self._by_caller[caller] = held + 1
        return Reservation(self, caller)

    def _leave(self, caller: str) -> None:
        with self._lock:
            self._admitted -= 1
            left = self._by_caller.get(caller, 0) - 1
            if left > 0:
                self._by_caller[caller] = left
            else:
                self._by_caller.pop(caller, None)

    def _background(self, reservation: Reservation, content: bytes,
                    done: Callable[[Built | None, Exception | None], None]) -> None:
        built: Built | None = None
        error: Exception | None = None
        try:
            with self._free:
                built = self._run(content, warm=True)
        except Exception as exc:  # noqa: BLE001 - the build's outcome, told to done
            error = exc
        finally:
            reservation.cancel()  # the slot is free before the result is stored
        done(built, error)

    def _spawn(self, *, warm: bool) -> subprocess.Popen:
        argv = [sys.executable, "-m", __name__, str(max(1, math.ceil(self.timeout_s))),
                str(self.memory_mb * MB), str(self.max_memory), "warm" if warm else "cold"]
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env={**os.environ, **ONE_THREAD})

    def _child(self, *, warm: bool) -> subprocess.Popen:
        """A process for one build. A model's takes the spare, which has already spent
        the second of importing onnx and numpy, and leaves a new spare for the next
        model (one per gateway process once it has built a model, about 56 MB, idle
        on its stdin; it exits when the gateway does and its pipe closes)."""
        if not warm:
            return self._spawn(warm=False)
        with self._lock:
            child, self._spare = self._spare, self._spawn(warm=True)
        if child is None or child.poll() is not None:
            child = self._spawn(warm=True)
        return child

    def _run(self, content: bytes, *, warm: bool = False) -> Built:
        child = self._child(warm=warm)
        try:
            out, err = child.communicate(content, self.timeout_s * WALL_FACTOR + WALL_SLACK_S)
        except subprocess.TimeoutExpired:
            raise self._over_time() from None
        finally:
            if child.poll() is None:  # over its wall time, or this thread was interrupted
                child.kill()
                child.wait()
        reply = _unpack(out) if child.returncode == 0 else {}
        if "wasm" in reply:
            return Built(reply["wasm"], abi.ModuleInfo(**reply["info"]), reply["artifact"],
                         reply.get("kind", "wasm"), reply.get("model"))
        if "refused" in reply:
            raise InvalidModule(reply["refused"])
        if child.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            raise self._over_time()
        # Python's MemoryError outside the build (packing its reply, say) ends it with 1.
        if "memory" in reply or b"memory allocation" in err or b"\nMemoryError" in err or \
                child.returncode in (-signal.SIGABRT, -signal.SIGSEGV):
            # Rust aborts when an allocation fails under RLIMIT_AS.
            raise InvalidModule(f"module refused: compiling it needs more memory than the "
                                f"compile memory limit of {self.memory_mb} MB "
                                f"(WASMQ_COMPILE_MEMORY_MB)")
        log.error("build process ended with %s: %s", child.returncode,
                  err.decode(errors="replace")[-2000:])
        raise WasmqError(f"the build of this upload ended unexpectedly (exit code "
                         f"{child.returncode}); it has been logged")

    def _over_time(self) -> InvalidModule:
        return InvalidModule(f"module refused: compiling it took longer than the compile "
                             f"time limit of {self.timeout_s:g} s (WASMQ_COMPILE_TIMEOUT)")


class Reservation:
    """One admitted build: run it in the background with `start`, or give the place
    back with `cancel` (once; later calls do nothing)."""

    def __init__(self, builds: Builds, caller: str = "") -> None:
        self._builds, self._caller = builds, caller
        self._held = True
        self._lock = threading.Lock()

    def start(self, content: bytes,
              done: Callable[[Built | None, Exception | None], None]) -> threading.Thread:
        """Build `content` on a thread of its own once a slot is free; `done` gets the
        build or the exception that ended it, on that thread."""
        thread = threading.Thread(target=self._builds._background, args=(self, content, done),
                                  name="wasmq-build", daemon=True)
        thread.start()
        return thread

    def cancel(self) -> None:
        with self._lock:
            held, self._held = self._held, False
        if held:
            self._builds._leave(self._caller)


def _unpack(out: bytes) -> dict:
    try:
        reply = msgpack.unpackb(out)
    except (ValueError, msgpack.UnpackException):
        return {}
    return reply if isinstance(reply, dict) else {}


if __name__ == "__main__":
    sys.exit(_serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                    sys.argv[4] == "warm"))
