"""Noting how a worker process died while running a task, for the task's record.

When a pool process dies mid-task, Celery's main process learns it (billiard
reports the exit code as a `WorkerLostError`) and, since wasmq's task rejects
its message on a lost worker, puts the message back for another run. The claim
of that run counts attempts; after `WASMQ_MAX_ATTEMPTS` the task fails, and its
message says how the last process ended ("signal 9 (SIGKILL)"). Celery lets a
task name its own Request class (`Task.Request`, documented in "Custom request
classes"); this one writes that note before Celery's own handling.
"""

from __future__ import annotations

import logging
import re
from functools import cache

import redis
from billiard.einfo import ExceptionWithTraceback
from celery.exceptions import WorkerLostError
from celery.worker.request import Request

from wasmq.broker import keys
from wasmq.broker.connections import new_client
from wasmq.broker.settings import Settings

log = logging.getLogger("wasmq.node")

LOST_WORKER_REQUEST = "wasmq.workers.lost:LostWorkerRequest"
_HOW = re.compile(r"prematurely: (.+?)(?:\s+Job: \d+)?\.?$")


def how_it_ended(exc: WorkerLostError) -> str:
    """E.g. "signal 9 (SIGKILL)" or "exitcode 3", from billiard's message."""
    text = str(exc)
    match = _HOW.search(text)
    return match.group(1) if match else text


@cache
def _client(settings: Settings) -> redis.Redis:
    """Not the pool processes' shared client: this runs in Celery's main process."""
    return new_client(settings)


class LostWorkerRequest(Request):
    def on_failure(self, exc_info: object, send_failed_event: bool = True,
                   return_ok: bool = False) -> object:
        exc = getattr(exc_info, "exception", None)
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, WorkerLostError):
            self._note(how_it_ended(exc))
        return super().on_failure(exc_info, send_failed_event=send_failed_event,
                                  return_ok=return_ok)

    def _note(self, how: str) -> None:
        job = self.args[0] if self.args else None
        batch = job if isinstance(job, list) else [job]  # a batch's (workers/batch.py)
        tids = [j.get("tid") for j in batch if isinstance(j, dict) and j.get("tid")]
        settings: Settings | None = getattr(self.task.app, "wasmq_settings", None)
        if not tids or settings is None:
            return
        log.warning("tid=%s: its worker process ended (%s) while running it",
                    ",".join(tids), how)
        try:
            pipe = _client(settings).pipeline(transaction=True)
            for tid in tids:
                pipe.hset(keys.task(tid), "lost", how)
                pipe.expire(keys.task(tid), settings.result_ttl)  # never a key without a TTL
            pipe.execute()
        except redis.RedisError:
            log.warning("could not note how the worker of %s ended", tid, exc_info=True)
