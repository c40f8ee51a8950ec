"""Figures of issue 14's hostile uploads and host calls: `python -m bench.hostile`.

Compile bombs go through the gateway's own build step (toolchain/build.py, the
default limits unless WASMQ_COMPILE_* say otherwise), timed and with the peak
resident memory of this process (the gateway's side) and of the build child.
Host-call floods run in the worker's runtime in this process, with the default
task limits, timed and with this process's peak resident memory.
"""

from __future__ import annotations

import hashlib
import resource
import time

from tests import bombs, hostile
from wasmq.broker.limits import Limits
from wasmq.broker.settings import MB, Settings
from wasmq.toolchain.build import Builds
from wasmq.toolchain.spool import Spooled
from wasmq.workers.runtime import ModuleFailed, Runtime


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def compile_bombs(settings: Settings) -> None:
    builds = Builds(settings)
    print(f"compile bombs (limits: {settings.compile_timeout:g} s CPU, "
          f"{settings.compile_memory_mb} MB; {builds.slots} builds at once)")
    for name, module in [("20,000 locals, 50,000 local.set", bombs.many_locals()),
                         ("2.5 M nested blocks", bombs.nested_blocks())]:
        before = _rss_mb()
        started = time.perf_counter()
        try:
            builds.build(Spooled.of(module))
            outcome = "built"
        except Exception as exc:  # the refusal is the figure
            outcome = getattr(exc, "message", str(exc))
        took = time.perf_counter() - started
        print(f"  {name} ({len(module) / MB:.2f} MB): {took:.2f} s; gateway peak RSS "
              f"{_rss_mb():.0f} MB (+{_rss_mb() - before:.0f}), build child peak "
              f"{_child_rss_mb():.0f} MB\n    -> {outcome}")


def host_call_floods() -> None:
    runtime = Runtime()
    limits = Limits()
    print(f"host-call floods (limits: {limits.timeout_s:g} s, {limits.max_memory_mb:g} MB)")
    for name, module in [
            ("wasi_unstable.fd_write, 28 M iovecs", hostile.fd_write_flood("wasi_unstable")),
            ("wasi_snapshot_preview1.fd_write, 28 M iovecs", hostile.fd_write_flood()),
            ("wasi_unstable.poll_oneoff, 3 M subscriptions", hostile.poll_flood("wasi_unstable")),
            ("wasi_snapshot_preview1.poll_oneoff, 3 M subscriptions", hostile.poll_flood())]:
        prepared = runtime.prepare(hashlib.sha256(module).hexdigest(), lambda m=module: m)
        before = _rss_mb()
        started = time.perf_counter()
        try:
            runtime.run(prepared, b"x", limits)
            outcome = "ran"
        except ModuleFailed as exc:
            outcome = exc.message
        took = time.perf_counter() - started
        print(f"  {name}: {took * 1000:.1f} ms; worker peak RSS {_rss_mb():.0f} MB "
              f"(+{_rss_mb() - before:.0f})\n    -> {outcome}")


def main() -> None:
    compile_bombs(Settings.from_env())
    host_call_floods()


if __name__ == "__main__":
    main()
