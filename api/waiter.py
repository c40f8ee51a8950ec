"""Wake waiting requests when their task finishes: one listener per process.

Request threads never hold a Redis connection or poll while they wait (see
celery#3761, #6350, #4857 and redis-py#3184 for what goes wrong with
`AsyncResult.get()` in threads). A single thread subscribes to the completion
channel and sets the Event of whoever waits for that tid. If the subscription
drops, every waiter is woken so it re-reads its record: a lost wake-up can
delay an answer to the next check, never lose it. A wake-up (finish.lua publishes
it) lists each finished call's tid and, for a small record, the record itself, so its
waiter answers without reading it back; one that cannot be read wakes every waiter.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack
import redis

from wasmq.broker import keys
from wasmq.broker.protocol.record import TaskRecord
from wasmq.broker.subscription import listen_forever


def parse_wakeups(data: bytes) -> list[tuple[str, list | None]]:
    """(tid, the record's field/value list if shipped) of each call; ("", None) when
    the message cannot be read."""
    try:
        return [(tid.decode(errors="replace"), flat or None)
                for tid, flat in msgpack.unpackb(data, raw=True)]
    except (ValueError, TypeError, AttributeError, msgpack.UnpackException):
        return [("", None)]


def unpack_shipped(flat: list | None) -> TaskRecord | None:
    """The shipped record, or None if there is none, it cannot be read or it is not
    finished."""
    try:
        record = TaskRecord.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return record if record.status.finished else None


@dataclass(eq=False)  # hashed by identity: one per waiting request
class Waiter:
    event: threading.Event = field(default_factory=threading.Event)
    record: TaskRecord | None = None  # the finished record, when it was shipped
    on_wake: Callable[[], None] | None = None  # api/tasks.py's, waiting on its event loop

    def wake(self, record: TaskRecord | None) -> None:
        if record is not None:
            self.record = record
        self.event.set()
        if self.on_wake is not None:
            self.on_wake()


class CompletionListener:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._waiters: dict[str, set[Waiter]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._subscribed = threading.Event()

    def start(self) -> None:
        """Start lazily, so a forking server starts one per worker process."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="wasmq-waiter",
                                                daemon=True)
                self._thread.start()
        self._subscribed.wait(timeout=2)

    @property
    def subscribed(self) -> bool:
        """Listening now: a waiter registered now hears its task's completion."""
        return self._subscribed.is_set() and self._thread is not None \
            and self._thread.is_alive()

    def register(self, tid: str) -> Waiter:
        waiter = Waiter()
        with self._lock:
            self._waiters.setdefault(tid, set()).add(waiter)
        return waiter

    def unregister(self, tid: str, waiter: Waiter) -> None:
        with self._lock:
            group = self._waiters.get(tid)
            if group is not None:
                group.discard(waiter)
                if not group:
                    del self._waiters[tid]

    def _wake(self, tid: str | None, shipped: list | None = None) -> None:
        with self._lock:
            groups = [self._waiters.get(tid, set())] if tid else list(self._waiters.values())
            waiters = [w for group in groups for w in group]
        # Every process hears every completion: unpack only what someone waits for.
        record = unpack_shipped(shipped) if waiters and shipped else None
        for waiter in waiters:
            waiter.wake(record)

    def _heard(self, data: bytes) -> None:
        for tid, shipped in parse_wakeups(data):
            self._wake(tid or None, shipped)

    def _run(self) -> None:
        def subscribed() -> None:
            self._wake(None)  # a gap in the subscription may have swallowed wake-ups
            self._subscribed.set()

        def lost() -> None:
            self._subscribed.clear()
            self._wake(None)

        listen_forever(self.redis, keys.DONE_CHANNEL,
                       self._heard,
                       what="completion listener", on_subscribed=subscribed, on_lost=lost)
