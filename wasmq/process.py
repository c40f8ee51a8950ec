"""A child process that cannot outlive whoever started it, for `wasmq up`, the tests and bench.

Each child leads its own process group, so stopping it reaches every process
it started (Granian's server processes, Celery's pool) even when the child
itself died first and its own children were left behind; and it gets SIGTERM
if its parent dies (Linux `PR_SET_PDEATHSIG`), so a `wasmq up` killed with
SIGKILL still takes its children with it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _prctl(option: int, value: int) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value)
    except OSError:  # not Linux: stopping through the parent still reaches every group
        pass


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """This process gets `sig` when its parent dies. Called in a fresh child, and
    by the gateway's server processes, whose parent is the gateway's main process."""
    _prctl(PR_SET_PDEATHSIG, sig)


def _in_own_group() -> None:
    die_with_parent()
    os.setpgrp()


class Child:
    """One child process in its own process group, with its output in a log file
    (or on this process's terminal when `log` is None)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str],
                 log: Path | None = None, cwd: Path | None = None) -> None:
        self.name, self.argv, self.env, self.log, self.cwd = name, argv, env, log, cwd
        self.popen: subprocess.Popen | None = None
        self.started_at = 0.0
        self.restarts = 0

    def start(self) -> Child:
        out = open(self.log, "ab") if self.log else None
        try:
            self.popen = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdout=out,
                stderr=subprocess.STDOUT if out else None, stdin=subprocess.DEVNULL,
                preexec_fn=_in_own_group)
        finally:
            if out is not None:  # the child has its own descriptor; a restart must not leak ours
                out.close()
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int, group: bool = True) -> None:
        """Signal the child's whole process group (or the child alone)."""
        if self.popen is None:
            return
        try:
            if group:
                os.killpg(self.popen.pid, sig)
            else:
                os.kill(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the group, SIGKILL after `timeout`; then SIGKILL to whatever of
        the group is left, which is every orphan once the child itself has died."""
        if self.popen is None:
            return
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait()
        self.signal(signal.SIGKILL)
        self.popen.poll()

    def output(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")
