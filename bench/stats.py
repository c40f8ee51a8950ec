"""Percentiles and the machine description that goes with every result."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from collections.abc import Callable
from typing import Any

import wasmtime


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def median_ms(values: list[float]) -> float:
    return ms(statistics.median(values))


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.platform(),
            "python": platform.python_version(),
            "wasmtime": _version("wasmtime"), "celery": _version("celery"),
            "redis-py": _version("redis"), "loadavg_start": _loadavg()}


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def loadavg() -> list[float]:
    return _loadavg()


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return getattr(wasmtime, "__version__", "?") if package == "wasmtime" else "?"


def run_async(coroutine: Any) -> Any:
    """`asyncio.run` on a thread of its own: Playwright's sync API (the browser tests)
    leaves an event loop running on the main thread for the rest of a test session."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def timed_main(doc: str, run: Callable[[float], dict], report: Callable[[dict], str]) -> None:
    """`python -m bench.<attack> [--seconds S]`: run the attack that long, print it."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    print(report(run(parser.parse_args().seconds)))


def process_tree(pid: int) -> list:
    """The process `pid` and its descendants, as psutil sees them ([] once it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
