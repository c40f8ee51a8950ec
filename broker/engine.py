"""The wasmtime engine configuration, shared by upload validation and execution.

Serialized modules only load into an engine with the same wasmtime version,
target and settings, so the configuration and its fingerprint live here,
side by side: change one and the other changes with it.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

import wasmtime

# 20 wake-ups a second per worker process: time limits land within 50 ms, and the
# ticker rarely competes with the task thread for the GIL (at 100/s it showed
# in worker profiles).
EPOCH_TICK_S = 0.05

# Every engine setting, as (Config attribute, value); the fingerprint hashes this list.
SETTINGS: tuple[tuple[str, object], ...] = (
    ("epoch_interruption", True),
    ("cranelift_opt_level", "speed"),
)


def make_engine(parallel_compilation: bool = True) -> wasmtime.Engine:
    """`parallel_compilation` only changes how many threads compile a module, not
    the compiled code, so it is not part of the fingerprint."""
    config = wasmtime.Config()
    for name, value in SETTINGS:
        setattr(config, name, value)
    config.parallel_compilation = parallel_compilation
    return wasmtime.Engine(config)


def _cpu_features() -> str:
    """Cranelift targets the host CPU's features, so they are part of the target."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor()


@lru_cache(maxsize=4)
def fingerprint(settings: tuple[tuple[str, object], ...] = SETTINGS) -> str:
    """Which serialized modules an engine with `settings` can load: a short, stable id."""
    try:
        wasmtime_version = version("wasmtime")
    except PackageNotFoundError:  # running from a source tree
        wasmtime_version = "unknown"
    parts = [f"wasmtime={wasmtime_version}", f"machine={platform.machine()}",
             f"os={sys.platform}", f"cpu={_cpu_features()}",
             *(f"{name}={value}" for name, value in settings)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
