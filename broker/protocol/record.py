"""The task record: one Redis hash per task, with a TTL, encoded and decoded here only."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from enum import Enum

from wasmq.broker.clock import now


class Status(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (Status.SUCCEEDED, Status.FAILED)


def new_tid() -> str:
    """Scailable-style id with 128 random bits, so ids cannot be guessed."""
    return f"wasmqt-{secrets.token_hex(16)}"


@dataclass
class TaskRecord:
    tid: str
    cfid: str
    status: Status = Status.QUEUED
    createdAt: float = field(default_factory=now)
    startedAt: float | None = None
    finishedAt: float | None = None
    node: str = ""  # the worker node (Celery worker) that claimed it
    worker: str = ""  # the node's pool process that ran it, "<host>:<pid>"
    result: bytes | None = None
    message: str = ""
    cause: str = ""  # a broker.causes.Cause value when it failed
    stdout: str = ""
    stderr: str = ""
    attempts: int = 0  # runs started (1 the first; more after a node or process was lost)
    execMs: float | None = None
    private: bool = False  # its function was private: retrieving it needs a key
    caller: str = ""  # who submitted it (rate limits, tasks in flight, fair share)
    queue: str = ""  # the Celery queue whose nodes run it

    _FLOATS = ("createdAt", "startedAt", "finishedAt", "execMs")
    _TEXTS = ("node", "worker", "message", "cause", "stdout", "stderr", "caller", "queue")

    def to_hash(self) -> dict[str, bytes | str | float | int]:
        return {name: value.value if isinstance(value, Status) else
                int(value) if isinstance(value, bool) else value
                for name, value in self.__dict__.items() if value is not None}

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> "TaskRecord":
        d = {k.decode(): v for k, v in raw.items()}
        rec = cls(tid=d.get("tid", b"").decode(), cfid=d.get("cfid", b"").decode())
        rec.status = Status(d.get("status", b"queued").decode())
        for name in cls._FLOATS:
            if name in d:
                setattr(rec, name, float(d[name]))
        for name in cls._TEXTS:
            if name in d:
                setattr(rec, name, d[name].decode("utf-8", errors="replace"))
        rec.result = d.get("result")
        rec.attempts = int(d.get("attempts", 0))
        rec.private = d.get("private") == b"1"
        return rec
