"""One wasmq per port and per data directory, checked before anything starts.

Granian binds each server process's socket with `SO_REUSEPORT` (on Linux every
process builds its own listener on the shared port), so a second gateway on a
port already served by one of the same user would be accepted by the kernel
and get half the connections. A plain bind, without `SO_REUSEPORT`, fails on
any port someone listens on: that is the check. Two wasmq starting at the same
moment could both pass it, so a gateway also holds an flock on a per-port lock
file for as long as it runs; a data directory has a lock file of its own,
naming the `wasmq up` that holds it. Locks taken with flock die with their
process, so a crashed instance never blocks the next one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

LOCK_NAME = "wasmq.lock"


class InUse(Exception):
    """The port or data directory is taken; the message says by what."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Instance:
    """What a running `wasmq up` writes into its data directory's lock file."""

    pid: int
    url: str
    redis_url: str


def check_port(host: str, port: int) -> None:
    """Raise InUse if anything listens on `port` (or holds it bound) at `host`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR as every server sets it: a port with connections only in
        # TIME_WAIT from a previous run is free; a listening one is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InUse(f"port {port} is already in use on {host or '*'}: stop what "
                            f"listens there or pick another --port") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise InUse(f"cannot listen on {host}: no such local address") from None
            raise InUse(f"cannot listen on {host}:{port}: {exc.strerror}") from None


class Lock:
    """An flock held on a file for the life of this process (or until released)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def write(self, text: str) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, text.encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def port_lock_path(port: int) -> Path:
    folder = Path(tempfile.gettempdir()) / f"wasmq-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / f"port-{port}.lock"


def claim_port(host: str, port: int) -> Lock:
    """Check that `port` is free and hold its lock; InUse if not."""
    lock = Lock(port_lock_path(port))
    if not lock.acquire():
        raise InUse(f"port {port} is already in use by another wasmq gateway: stop it or "
                    f"pick another --port")
    try:
        check_port(host, port)
    except InUse:
        lock.release()
        raise
    lock.write(f"{os.getpid()}\n")
    return lock


def claim_data_dir(data_dir: Path) -> Lock:
    """Hold the data directory's lock; InUse, naming the instance that holds it, if taken."""
    lock = Lock(data_dir / LOCK_NAME)
    if lock.acquire():
        return lock
    running = read_instance(data_dir)
    who = (f"wasmq up (pid {running.pid}) at {running.url}" if running
           else "another wasmq up")
    raise InUse(f"data directory {data_dir} is in use by {who}: stop it, or give this one "
                f"another --data-dir")


def publish(lock: Lock, instance: Instance) -> None:
    lock.write(json.dumps(asdict(instance)) + "\n")


def read_instance(data_dir: Path) -> Instance | None:
    """The `wasmq up` that holds `data_dir`, or None if none is running there."""
    probe = Lock(data_dir / LOCK_NAME)
    if not (data_dir / LOCK_NAME).exists():
        return None
    if probe.acquire():  # nobody holds it: what it says is stale
        probe.release()
        return None
    try:
        return Instance(**json.loads((data_dir / LOCK_NAME).read_text()))
    except (OSError, ValueError, TypeError):
        return None
