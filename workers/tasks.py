"""The Celery task that runs one compute-function call on this node.

The job message (broker/protocol/messages.py `Job`) carries the tid, the
module's sha256, the input (or nothing when it travelled by reference), the
limits and the caller, so a task costs one claim script, a binary fetch only on
a cache miss, and one finish script.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from functools import lru_cache

import redis
from celery import Celery, Task
from celery.exceptions import Reject
from celery.signals import worker_process_init

from wasmq.broker.artifacts import Artifacts
from wasmq.broker.causes import Cause
from wasmq.broker.celery_app import RUN_BATCH, RUN_TASK
from wasmq.broker.connections import get_redis, storage_full
from wasmq.broker.errors import TaskFailed
from wasmq.broker.limits import Limits
from wasmq.broker.logs import bind_tid
from wasmq.broker.protocol.messages import Job, JobMessages
from wasmq.broker.protocol.queue import Claim, Finished, TaskQueue
from wasmq.broker.protocol.record import Status
from wasmq.broker.settings import MB, Settings
from wasmq.broker.store import RedisStore
from wasmq.workers.batch import Finisher, batch_budget, batch_time_limit, split
from wasmq.workers.lost import LOST_WORKER_REQUEST
from wasmq.workers.prefetch import Prefetcher
from wasmq.workers.runtime import ModuleFailed, Runtime
from wasmq.workers.warmup import warm_up

log = logging.getLogger("wasmq.worker")


class NodeState:
    """What a worker process builds once, after the fork, and keeps."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        client = get_redis(settings)
        self.tasks = TaskQueue.from_settings(client, settings)
        self.store = RedisStore(client)
        self.limits = Limits.from_settings(settings)
        self.runtime = Runtime(settings.module_cache_mb * MB, Artifacts(client))
        self.prefetcher = Prefetcher(self.runtime, client)
        self.node = f"{socket.gethostname()}:{os.getpid()}"
        self._finisher: Finisher | None = None

    @property
    def finisher(self) -> Finisher:
        """Started on the first batch: a process that never runs one has no thread."""
        if self._finisher is None:
            self._finisher = Finisher(self.tasks, lambda job, outcome: store(self, job,
                                                                             outcome))
        return self._finisher


# Celery's per-task INFO lines ("received", "succeeded in") cost the busiest
# process, the worker's main one, a formatted write per task; wasmq logs each
# task once itself, with its tid and outcome.
PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def register_tasks(app: Celery, settings: Settings) -> None:
    for name in PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    @lru_cache(maxsize=1)
    def state() -> NodeState:
        return NodeState(settings)

    @worker_process_init.connect(weak=False)
    def warm(**_: object) -> None:
        # Build the engine, linker and Redis connection and preload hot modules
        # when the pool process starts: a new process answers its first call warm.
        # From then on, modules uploaded later are loaded as they arrive.
        st = state()
        st.prefetcher.start()
        try:
            warm_up(st.runtime, st.tasks, st.runtime.cache_bytes // 2)
        except redis.RedisError:  # Redis is down: the first task connects, or is redelivered
            log.warning("warm: 0 hot modules preloaded; Redis unreachable at process start")

    @app.task(name=RUN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
              Request=LOST_WORKER_REQUEST)
    def run(self: Task, job: dict) -> None:
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        try:
            execute(state(), Job.from_dict(job), redelivered=redelivered)
        except redis.RedisError as exc:
            # Failing would ack the message (acks_on_failure) and strand the
            # task as "running"; requeued, it runs again once Redis answers.
            raise Reject(exc, requeue=True) from exc

    messages = JobMessages(app, settings.queue)

    @app.task(name=RUN_BATCH, bind=True, acks_late=True, reject_on_worker_lost=True,
              Request=LOST_WORKER_REQUEST, time_limit=batch_time_limit(settings))
    def run_batch(self: Task, jobs: list[dict]) -> None:
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        try:
            execute_batch(state(), [Job.from_dict(j) for j in jobs], messages,
                          redelivered=redelivered)
        except redis.RedisError as exc:
            raise Reject(exc, requeue=True) from exc


def execute_batch(st: NodeState, jobs: list[Job], messages: JobMessages, *,
                  redelivered: bool = False) -> None:
    """Run a batch's calls back to back (workers/batch.py says what leaves it)."""
    if redelivered:  # claimed or not before: its message has left the queue either way
        split(st.tasks, messages, jobs, st.node, undo=False, unclaimed=jobs[0].tid)
        return
    claims = st.tasks.claim_batch(jobs, st.node)
    log.info("batch %s: %d calls", jobs[0].tid, len(jobs))
    finisher = st.finisher
    started = time.monotonic()
    try:
        for i, (job, claim) in enumerate(zip(jobs, claims, strict=True)):
            if claim.state == "exhausted":
                finisher.add(job, _exhausted(claim, st.tasks.max_attempts))
                continue
            if claim.state != "running":
                log.info("tid=%s skipped: record is %s", job.tid, claim.state)
                continue
            if time.monotonic() - started >= batch_budget(st.settings):
                rest = [j for j, c in zip(jobs[i:], claims[i:], strict=True)
                        if c.state == "running"]
                split(st.tasks, messages, rest, st.node, undo=True)
                break
            bind_tid(job.tid)  # its log lines carry its own tid
            outcome = _outcome(st, job, job.data if job.data is not None else claim.data)
            finisher.add(job, outcome)
            _log_outcome(job, outcome)
    finally:
        finisher.flush()


def execute(st: NodeState, job: Job, *, redelivered: bool = False) -> None:
    """Run one call. A first delivery with its input inline is run while its claim
    is on its way; a redelivered one waits for the claim's answer, which may say its
    runs already ended their worker process too often (a poison pill must not run
    again to say so)."""
    if job.data is None or redelivered:
        claim = st.tasks.claim(job, st.node)
        if claim.state == "exhausted":
            st.tasks.finish(job, _exhausted(claim, st.tasks.max_attempts))
            return
        if claim.state != "running":
            log.info("tid=%s skipped: record is %s", job.tid, claim.state)
            return
        outcome = _outcome(st, job, job.data if job.data is not None else claim.data)
    else:
        sent = st.tasks.send_claim(job, st.node)
        try:
            outcome = _outcome(st, job, job.data)
        finally:
            claim = sent.answer()
        if claim.state == "exhausted":  # ran once more than it may: its result is not stored
            st.tasks.finish(job, _exhausted(claim, st.tasks.max_attempts))
            return
        if claim.state != "running":  # ran anyway; a finished record is not written again
            log.info("tid=%s skipped: record is %s", job.tid, claim.state)
            return
    store(st, job, outcome)
    _log_outcome(job, outcome)  # after the store: the caller's answer does not wait for it


def _log_outcome(job: Job, outcome: Finished) -> None:
    if outcome.status == Status.SUCCEEDED:
        log.info("tid=%s succeeded in %.2f ms", job.tid, outcome.exec_ms or 0.0)
    elif outcome.cause != Cause.INTERNAL:  # logged with its traceback where it happened
        log.info("tid=%s failed: %s", job.tid, outcome.message)


def store(st: NodeState, job: Job, outcome: Finished) -> None:
    """Store one outcome; when Redis is full, say so in the record if a small write fits."""
    try:
        stored = st.tasks.finish(job, outcome)
    except redis.RedisError as exc:
        if not storage_full(exc):
            raise
        # Say so in the record if a small write still fits; if not, the message is
        # requeued (`run`) and the task runs again once Redis has room.
        log.warning("tid=%s: storage is full, its result could not be stored: %s",
                    job.tid, exc)
        stored = st.tasks.finish(job, Finished(Status.FAILED, cause=Cause.STORAGE_FULL,
                                               message=(
            "storage is full: the task ran, but Redis refused to store its result "
            "(WASMQ_REDIS_MAXMEMORY_MB); call it again later")))
    if not stored:
        log.info("tid=%s finished already (a redelivered run); its first answer stands",
                 job.tid)


def _exhausted(claim: Claim, max_attempts: int) -> Finished:
    last = claim.lost or "its worker node stopped answering"
    return Finished(Status.FAILED, cause=Cause.WORKER_LOST, message=(
        f"the task's run ended its worker process {claim.attempts} times (last: {last}); "
        f"it is not run again (WASMQ_MAX_ATTEMPTS={max_attempts})"))


def _outcome(st: NodeState, job: Job, data: bytes | None) -> Finished:
    tid = job.tid
    if data is None:
        return Finished(Status.FAILED, cause=Cause.MISSING_DATA,
                        message="the task's input has expired")
    limits = st.limits.narrowed(job.limits)
    sha = job.sha256
    try:
        prepared = st.runtime.prepare(sha, lambda: _binary(st, sha))
        outcome = st.runtime.run(prepared, data, limits)
    except ModuleFailed as exc:
        return Finished(Status.FAILED, message=exc.message, cause=exc.cause,
                        stdout=exc.stdout, stderr=exc.stderr)
    except TaskFailed as exc:
        return Finished(Status.FAILED, message=exc.message, cause=exc.cause)
    except redis.RedisError:
        raise  # the record cannot be written now; the message is redelivered
    except Exception as exc:  # a bug of ours must fail the task, not leave it running
        log.exception("tid=%s: internal error", tid)
        return Finished(Status.FAILED, cause=Cause.INTERNAL,
                        message=f"internal error in the worker ({type(exc).__name__})")
    return Finished(Status.SUCCEEDED, result=outcome.output, stdout=outcome.stdout,
                    stderr=outcome.stderr, exec_ms=outcome.exec_ms)


def _binary(st: NodeState, sha: str) -> bytes:
    data = st.store.get(sha)
    if data is None:
        raise TaskFailed("the function's binary was deleted before the task ran",
                         Cause.MISSING_DATA)
    return data
