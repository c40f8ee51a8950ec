"""Draining queued tasks: `wasmq purge` and `wasmq cancel` (the script is purge.lua).

A queued task lives in three places: its message in the queue list, its job kept
with its record (for resending a lost message) and its pending entry. Cancelling
removes all three and finishes the record as failed, "cancelled", so a caller
polling it gets an answer and a gateway waiting for it wakes. A running task
cannot be stopped from here: wasmtime's epoch interruption lives inside the
worker process that runs it, so `cancel` says so and leaves it to finish or to
reach its time limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from wasmq.broker import keys
from wasmq.broker.causes import Cause
from wasmq.broker.clock import now
from wasmq.broker.protocol import lua

MESSAGE = "cancelled"
CHUNK = 500  # entries per script call: a flood never blocks Redis for long


@dataclass
class Purged:
    tasks: int  # records marked cancelled
    messages: int  # queue messages dropped


@dataclass
class Cancelled:
    """What `cancel` found: the task's status before (None if there is no such
    task), whether it is cancelled now, and the node running it."""

    tid: str
    status: str | None
    cancelled: bool
    node: str = ""


class Purger:
    def __init__(self, client: redis.Redis, *, queue: str, ttl: int) -> None:
        self.redis = client
        self.queue = queue
        self.ttl = ttl
        self._script = lua.register(client, "purge")

    def purge(self, cfid: str = "") -> Purged:
        """Cancel every task queued now (of function `cfid`, when given)."""
        return self._walk(cfid=cfid, tid="")

    def cancel(self, tid: str) -> Cancelled:
        """Cancel one task if it is still queued."""
        status, node = self.redis.hmget(keys.task(tid), "status", "node")
        if status is None:
            return Cancelled(tid, None, False)
        before = status.decode()
        if before != "queued":
            return Cancelled(tid, before, False, (node or b"").decode())
        done = self._walk(cfid="", tid=tid)
        if done.tasks:
            return Cancelled(tid, before, True)
        status, node = self.redis.hmget(keys.task(tid), "status", "node")  # claimed meanwhile
        return Cancelled(tid, (status or b"").decode() or None, False, (node or b"").decode())

    def _walk(self, *, cfid: str, tid: str) -> Purged:
        cutoff, tasks, messages = now(), 0, 0
        for mode in ("records", "messages"):
            offset, finished = 0, False
            while not finished:
                offset, cancelled, removed, over = self._script(
                    keys=[self.queue, keys.PENDING, keys.METRIC_COUNTS],
                    args=[mode, offset, CHUNK, cfid, tid, cutoff, now(), self.ttl,
                          keys.DONE_CHANNEL, MESSAGE, Cause.CANCELLED.value,
                          f"failed:{Cause.CANCELLED.value}", keys.task(""),
                          keys.task_input("")])
                tasks += cancelled
                messages += removed
                finished = over == 1
        return Purged(tasks, messages)
