"""Sending calls through Celery: `send_task`, with the call's tid as the task id.

A call travels alone as `wasmq.run` (its job the argument), or with others that
arrived together as one `wasmq.run_batch` (a list of jobs). An input over
WASMQ_INLINE_INPUT_KB stays with the record and travels without the message.

Fair share is Celery's message priority (kombu's Redis transport keeps a list per
priority and takes the most urgent first): a caller's call goes at a priority that
grows as its calls in flight double, so a caller with hundreds queued never stands
before another's first few, and when everyone floods, calls go in the order they came.
"""

from __future__ import annotations

import secrets

from celery import Celery

from wasmq.broker.protocol.queue import Job

RUN_TASK = "wasmq.run"
RUN_BATCH = "wasmq.run_batch"
PRIORITY_STEPS = list(range(10))  # kombu's priority lists: 0 is taken first
# A publish that cannot reach Redis gives up in about half a second: a 503, not a hang.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                        "interval_max": 0.3}


def priority(ahead: int) -> int:
    """The priority of a caller's call with `ahead` of its calls already in flight."""
    return min(PRIORITY_STEPS[-1], max(0, ahead).bit_length())


class Calls:
    def __init__(self, app: Celery, inline_bytes: int) -> None:
        self.app, self.inline_bytes = app, inline_bytes

    def _argument(self, job: Job) -> dict:
        return job.to_dict(with_data=job.data is not None and len(job.data) <= self.inline_bytes)

    def send(self, jobs: list[Job], *, priority: int = 0, retries: int = 0) -> str:
        """Send one call, or several of one queue as a batch; the Celery task id."""
        first = jobs[0]
        # declare=[]: a message goes to its queue's list by name; declaring the queue on
        # every publish cost a tenth of send_task, and the nodes declare theirs.
        options = {"queue": first.queue, "priority": priority, "retries": retries,
                   "ignore_result": True, "retry": True, "declare": [],
                   "retry_policy": PUBLISH_RETRY_POLICY}
        if len(jobs) == 1:
            # Flower and `celery inspect` show argsrepr: the tid, never the input.
            self.app.send_task(RUN_TASK, args=[self._argument(first)], task_id=first.tid,
                               argsrepr=f"[{first.tid!r}]", **options)
            return first.tid
        batch_id = f"wasmqb-{secrets.token_hex(16)}"
        self.app.send_task(RUN_BATCH, args=[[self._argument(j) for j in jobs]],
                           task_id=batch_id, argsrepr=repr([[j.tid for j in jobs]]),
                           **options)
        return batch_id

    def waiting(self, queue: str) -> int:
        """Messages waiting in `queue`, as kombu counts them (0 when it holds none)."""
        with self.app.connection_for_read() as conn:
            try:
                return conn.default_channel.queue_declare(queue=queue, passive=True)[1]
            except conn.channel_errors:  # not found: no message waits in it
                return 0

    def retried(self, tids: list[str], reason: str) -> None:
        """Tell monitors (Flower, `celery events`) that these calls were sent again: a
        node lost is a retry in Celery's words, as a worker process lost is."""
        with self.app.events.default_dispatcher() as dispatcher:
            for tid in tids:
                dispatcher.send("task-retried", uuid=tid, exception=reason, traceback="")
