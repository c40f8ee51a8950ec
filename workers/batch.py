"""Running a batch: the calls of one `wasmq.run_batch` message, back to back.

The gateway sends calls that arrived together as one message (api/batcher.py).
Here they are claimed in one script, run one after the other on fresh
instances, and finished together: their outcomes go to Redis in one script
with one wake-up, and a `Finisher` thread stores what has waited 5 ms, so a
slow call never holds back the replies of the calls before it.

Two cases leave the batch: a batch redelivered (its worker process or node
died while running it) is split into one message per unfinished call, so a
call that kills its process is retried alone and only its own attempts run
out; and once a batch has run for BATCH_BUDGET_S (or one task's time limit,
WASMQ_TASK_TIMEOUT, if shorter), its calls not yet started go on as messages of
their own, at the back of the queue. So no call waits behind the others of its
batch for longer than that, and another caller's call waits behind about one of
them, not a whole batch of slow ones (the fair share counts messages: a batch
of sixteen 3-second calls would hold a worker process for 48 s). The message's
hard time limit is the budget plus one call's (`batch_time_limit`).
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from wasmq.broker.connections import storage_full
from wasmq.broker.protocol.messages import Job, JobMessages
from wasmq.broker.protocol.queue import Finished, TaskQueue
from wasmq.broker.settings import Settings

log = logging.getLogger("wasmq.worker")

FLUSH_AFTER_S = 0.005
BATCH_BUDGET_S = 1.0


def batch_budget(settings: Settings) -> float:
    """How long a batch starts calls before it sends the rest on alone."""
    return min(BATCH_BUDGET_S, settings.task_timeout)


def batch_time_limit(settings: Settings) -> float:
    """Celery's hard limit for a batch message: the budget of calls started, plus the
    last one's own hard limit."""
    return batch_budget(settings) + settings.hard_time_limit


class Finisher:
    """Stores the outcomes of the batch being run, together when they come fast."""

    def __init__(self, tasks: TaskQueue, store_one: object) -> None:
        self.tasks, self.store_one = tasks, store_one
        self._cond = threading.Condition()
        self._storing = threading.Lock()
        self._items: list[tuple[Job, Finished]] = []
        self._first_at = 0.0
        self._error: BaseException | None = None
        threading.Thread(target=self._loop, name="wasmq-finisher", daemon=True).start()

    def add(self, job: Job, outcome: Finished) -> None:
        with self._cond:
            self._items.append((job, outcome))
            if len(self._items) == 1:  # the thread already waits for the first one's time
                self._first_at = time.monotonic()
                self._cond.notify()

    def flush(self) -> None:
        """Every outcome added so far is stored when this returns (or it raises)."""
        with self._cond:
            taken, self._items = self._items, []
        with self._storing:  # an earlier store of the thread's is complete
            error, self._error = self._error, None
            if taken:
                self._store(taken)
        if error is not None:
            raise error

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._items:
                    self._cond.wait()
                left = self._first_at + FLUSH_AFTER_S - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                taken, self._items = self._items, []
                self._storing.acquire()  # before the condition is let go: flush() waits
            try:
                self._store(taken)
            except BaseException as exc:  # noqa: BLE001 - raised by the batch's flush()
                with self._cond:
                    self._items = taken + self._items
                self._error = exc
            finally:
                self._storing.release()

    def _store(self, done: list[tuple[Job, Finished]]) -> None:
        if len(done) == 1:
            self.store_one(*done[0])  # type: ignore[operator]
            return
        try:
            stored = self.tasks.finish_batch(done)
        except redis.RedisError as exc:
            if not storage_full(exc):
                raise
            for job, outcome in done:  # each says so on its own, if a small write fits
                self.store_one(job, outcome)  # type: ignore[operator]
            return
        for (job, _), ok in zip(done, stored, strict=True):
            if not ok:
                log.info("tid=%s finished already (a redelivered run); its first answer "
                         "stands", job.tid)


def split(tasks: TaskQueue, messages: JobMessages, jobs: list[Job], node: str, *,
          undo: bool, unclaimed: str = "") -> None:
    sent = tasks.split([(job, messages.encode(job)) for job in jobs], node, undo=undo,
                       unclaimed=unclaimed)
    log.info("batch %s: %d of its %d calls go on alone", jobs[0].tid if jobs else "-", sent,
             len(jobs))
