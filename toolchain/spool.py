"""Uploads kept on disk while they wait, and the bytes a gateway process holds of them.

Twenty 60 MB uploads held as `bytes` while they waited for a build slot took a
gateway to about 2 GB (issue 22). So an upload is written, as its body is parsed
(api/upload_body.py), into a file of its own (`Spooled`), which is what a build process reads
(toolchain/build.py) and what is sniffed (through a memory map, paged in by the
kernel, not copied). What must be in memory at once (a model stored in Redis, a
build's result on its way there) is counted against `InMemory`, a byte budget per
gateway process: past it the upload waits its turn, then is refused.
"""

from __future__ import annotations

import mmap
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from wasmq.broker.errors import BuildsBusy, TooLarge


def _file() -> BinaryIO:
    return tempfile.NamedTemporaryFile(prefix="wasmq-upload-")  # noqa: SIM115 - kept open


class Spooled:
    """An upload in a file of its own, at `path` (a build process opens it there),
    deleted by `close`."""

    def __init__(self, file: BinaryIO, size: int, done: bool = True) -> None:
        self.file, self.size, self.done = file, size, done

    @property
    def path(self) -> str:
        return self.file.name

    @classmethod
    def empty(cls) -> "Spooled":
        """A file to `append` to, then `finish`."""
        return cls(_file(), 0, done=False)

    def append(self, data: bytes, limit: int, what: str, setting: str) -> None:
        """`data` added at the end; TooLarge (naming `what` and the `setting` that
        bounds it) past `limit` bytes in all."""
        if self.size + len(data) > limit:
            raise TooLarge(f"{what} is larger than the limit of {limit // (1 << 20)} MB "
                           f"({setting})")
        self.file.write(data)
        self.size += len(data)

    def finish(self) -> None:
        self.file.flush()
        self.done = True

    @classmethod
    def of(cls, data: bytes) -> "Spooled":
        file = _file()
        file.write(data)
        file.flush()
        return cls(file, len(data))

    @contextmanager
    def view(self) -> Iterator[memoryview]:
        """The bytes, mapped: what the kernel pages in, not a copy in this process."""
        if not self.size:
            yield memoryview(b"")
            return
        with mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                yield view
            finally:
                view.release()

    def read(self) -> bytes:
        self.file.seek(0)
        return self.file.read()

    def fileno(self) -> int:
        return self.file.fileno()

    def close(self) -> None:
        self.file.close()


class InMemory:
    """Bytes of uploads and build results a gateway process holds at once: at most
    `budget`. `take(n)` (or `hold(n)`) waits up to `wait_s` for room (one holder
    alone may exceed the budget, else an upload over it could never pass), then
    BuildsBusy; `give(n)` gives it back."""

    def __init__(self, budget: int, wait_s: float = 30.0) -> None:
        self.budget, self.wait_s = budget, wait_s
        self.held = 0
        self._room = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        self.take(nbytes)
        try:
            yield
        finally:
            self.give(nbytes)

    def take(self, nbytes: int) -> None:
        deadline = time.monotonic() + self.wait_s
        with self._room:
            while self.held and self.held + nbytes > self.budget:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BuildsBusy(
                        f"this gateway process holds {self.held >> 20} MB of uploads and "
                        f"build results in memory, its bound of {self.budget >> 20} MB "
                        f"(4 x WASMQ_MAX_MODULE_MB); send this one again in a few seconds")
                self._room.wait(left)
            self.held += nbytes

    def give(self, nbytes: int) -> None:
        with self._room:
            self.held -= nbytes
            self._room.notify_all()
