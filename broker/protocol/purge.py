"""`wasmq purge` and `wasmq cancel`: draining queued calls.

`wasmq purge` is `celery purge` of the installation's queues (kombu's public
`queue_purge`, as `celery purge -Q` does it) and then the cancelling of every call
they held: its record fails as "cancelled", so pollers get an answer and waiting
gateways wake. Nothing of wasmq's sends a queued call again, so neither command
undoes the other. Only a queued call can be cancelled (finish.lua's `only_queued`):
a running one lives in its worker process's wasmtime store; a cancelled call whose
message is still somewhere is skipped when claimed.
"""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery

from wasmq.broker import keys
from wasmq.broker.causes import Cause
from wasmq.broker.protocol.queue import Finished, Job, TaskQueue
from wasmq.broker.protocol.record import Status

CHUNK = 500


@dataclass
class Purged:
    tasks: int  # records marked cancelled
    messages: int  # Celery messages dropped


@dataclass
class Cancelled:
    """The task's status before (None: no such task), and the node running it."""

    tid: str
    status: str | None
    cancelled: bool
    node: str = ""


CANCELLED = Finished(Status.FAILED, message="cancelled", cause=Cause.CANCELLED)


class Purger:
    def __init__(self, tasks: TaskQueue, app: Celery, default_queue: str) -> None:
        self.tasks, self.redis, self.app = tasks, tasks.redis, app
        self.default_queue = default_queue

    def queues(self) -> list[str]:
        """Every queue that has had calls, and the installation's own."""
        prefix = keys.queued("")
        found = {k.decode()[len(prefix):] for k in self.redis.scan_iter(f"{prefix}*")}
        return sorted(found | {self.default_queue})

    def purge(self, cfid: str = "") -> Purged:
        """Cancel every queued call (of function `cfid` only, when given: then the
        messages stay, and are skipped when claimed)."""
        messages, queues = 0, self.queues()
        if not cfid:
            with self.app.connection_for_write() as conn:
                messages = sum(conn.default_channel.queue_purge(q) or 0 for q in queues)
        return Purged(sum(self._cancel_queued(q, cfid) for q in queues), messages)

    def _cancel_queued(self, queue: str, cfid: str) -> int:
        cancelled = 0
        for raw, _ in self.redis.zscan_iter(keys.queued(queue), count=CHUNK):
            tid = raw.decode()
            fn, caller = self.redis.hmget(keys.task(tid), "cfid", "caller")
            if not cfid or (fn or b"").decode() == cfid:
                cancelled += self._cancel(tid, (caller or b"").decode(), queue)
        return cancelled

    def _cancel(self, tid: str, caller: str, queue: str) -> int:
        job = Job(tid=tid, sha256="", caller=caller, queue=queue)
        return int(self.tasks.finish([(job, CANCELLED)], node="", only_queued=True)[0])

    def cancel(self, tid: str) -> Cancelled:
        """Cancel one task if it is still queued."""
        status, caller, queue = self.redis.hmget(keys.task(tid), "status", "caller", "queue")
        if status is None:
            return Cancelled(tid, None, False)
        if self._cancel(tid, (caller or b"").decode(), (queue or b"").decode()):
            return Cancelled(tid, status.decode(), True)
        status, node = self.redis.hmget(keys.task(tid), "status", "node")
        return Cancelled(tid, (status or b"").decode() or None, False, (node or b"").decode())

