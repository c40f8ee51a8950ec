"""Wake waiting requests when their task finishes: one listener per process.

Request threads never hold a Redis connection or poll while they wait (see
celery#3761, #6350, #4857 and redis-py#3184 for what goes wrong with
`AsyncResult.get()` in threads). A single thread subscribes to the completion
channel and sets the Event of whoever waits for that tid. If the subscription
drops, every waiter is woken so it re-reads its record: a lost wake-up can
delay an answer to the next check, never lose it.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from broker import keys

log = logging.getLogger("wasmq.waiter")


class CompletionListener:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._waiters: dict[str, set[threading.Event]] = {}
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

    def register(self, tid: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(tid, set()).add(event)
        return event

    def unregister(self, tid: str, event: threading.Event) -> None:
        with self._lock:
            group = self._waiters.get(tid)
            if group is not None:
                group.discard(event)
                if not group:
                    del self._waiters[tid]

    def _wake(self, tid: str | None) -> None:
        with self._lock:
            groups = [self._waiters.get(tid, set())] if tid else list(self._waiters.values())
            events = [e for group in groups for e in group]
        for event in events:
            event.set()

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
                        self._wake(message["data"].decode())
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
