"""Wake waiting requests when their task finishes: one listener per process.

Request threads never hold a Redis connection or poll while they wait (see
celery#3761, #6350, #4857 and redis-py#3184 for what goes wrong with
`AsyncResult.get()` in threads). A single thread subscribes to the completion
channel and sets the Event of whoever waits for that tid. If the subscription
drops, every waiter is woken so it re-reads its record: a lost wake-up can
delay an answer to the next check, never lose it. A small finished record
travels with its wake-up (broker/records.py), so its waiter answers without
reading it back.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import redis

from broker import keys
from broker.records import TaskRecord, parse_wakeup

log = logging.getLogger("wasmq.waiter")


@dataclass(eq=False)  # hashed by identity: one per waiting request
class Waiter:
    event: threading.Event = field(default_factory=threading.Event)
    record: TaskRecord | None = None  # the finished record, when it was shipped


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

    def _wake(self, tid: str | None, record: TaskRecord | None = None) -> None:
        with self._lock:
            groups = [self._waiters.get(tid, set())] if tid else list(self._waiters.values())
            waiters = [w for group in groups for w in group]
        for waiter in waiters:
            if record is not None:
                waiter.record = record
            waiter.event.set()

    def _run(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(keys.DONE_CHANNEL)
                # A gap in the subscription may have swallowed wake-ups.
                self._wake(None)
                self._subscribed.set()
                backoff = 0.1
                while True:
                    # A bounded wait keeps redis-py's health checks running and
                    # never trips the client's socket timeout on a quiet channel.
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        self._wake(*parse_wakeup(message["data"]))
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("completion listener lost Redis (%s); reconnecting", exc)
            except Exception:  # the thread must outlive any surprise, or waiters sleep on
                log.exception("completion listener failed; resubscribing")
            finally:
                self._subscribed.clear()
                try:
                    pubsub.close()
                except Exception:  # closing a dead connection may itself fail
                    pass
            self._wake(None)
            time.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
