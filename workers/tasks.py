"""The Celery tasks that run calls: `wasmq.run` (one call; its task id is the tid) and
`wasmq.run_batch` (calls that arrived together).

A task claims its calls in one script, runs each on a fresh instance, stores the
outcomes (one script and one wake-up for outcomes that end close together) and ends
as SUCCESS, or FAILURE naming the calls that failed and why, so Flower and `celery
events` tell the truth. A batch hands its calls on to go alone (with their attempt
bumped, so its own message never runs them again) when it was retried after its
worker process died (a call that kills its process then uses up only its own
attempts) and once it has run for BATCH_BUDGET_S (no call waits behind its batch
longer, and another caller's call waits behind about one of them).
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache

import redis
from celery import Celery, Task
from celery.exceptions import Reject
from celery.signals import worker_process_init

from wasmq.broker.artifacts import Artifacts
from wasmq.broker.causes import Cause
from wasmq.broker.connections import get_redis, storage_full
from wasmq.broker.errors import TaskFailed
from wasmq.broker.limits import Limits
from wasmq.broker.logs import bind_tid
from wasmq.broker.protocol import recovery
from wasmq.broker.protocol.calls import RUN_BATCH, RUN_TASK, Calls
from wasmq.broker.protocol.queue import Finished, Job, TaskQueue
from wasmq.broker.protocol.record import Status
from wasmq.broker.settings import MB, Settings
from wasmq.broker.store import RedisStore
from wasmq.workers.prefetch import Prefetcher
from wasmq.workers.runtime import ModuleFailed, Runtime
from wasmq.workers.warmup import warm_up

log = logging.getLogger("wasmq.worker")

FLUSH_AFTER_S = 0.005  # outcomes that waited this long are stored before the next call runs
BATCH_BUDGET_S = 1.0


class CallsFailed(Exception):
    """Ends a Celery task as FAILURE: its calls' outcomes are stored already."""


def batch_budget(settings: Settings) -> float:
    """How long a batch starts calls before it hands the rest on."""
    return min(BATCH_BUDGET_S, settings.task_timeout)


class NodeState:
    """What a worker process builds once, after the fork, and keeps."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.settings = settings
        client = get_redis(settings)
        self.tasks = TaskQueue.from_settings(client, settings)
        self.calls = Calls(app, settings.inline_input_kb * 1024)
        self.store = RedisStore(client)
        self.limits = Limits.from_settings(settings)
        self.runtime = Runtime(settings.module_cache_mb * MB, Artifacts(client))
        self.prefetcher = Prefetcher(self.runtime, client)
        self.node = recovery.identity()  # the main process's: made before the fork


# Celery's per-task INFO lines cost the busy main process a write per task; wasmq logs
# each call once itself, with its tid and outcome.
PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def register_tasks(app: Celery, settings: Settings) -> None:
    for name in PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)

    @lru_cache(maxsize=1)
    def state() -> NodeState:
        return NodeState(app, settings)

    @worker_process_init.connect(weak=False)
    def warm(**_: object) -> None:
        """A new pool process answers its first call warm: hot modules preloaded."""
        st = state()
        st.prefetcher.start()
        try:
            warm_up(st.runtime, st.tasks, st.runtime.cache_bytes // 2)
        except redis.RedisError:  # Redis is down: the first task connects, or is redelivered
            log.warning("warm: 0 hot modules preloaded; Redis unreachable at process start")

    options = {"bind": True, "max_retries": settings.max_attempts - 1,
               "default_retry_delay": 0, "throws": (CallsFailed,)}

    def run_calls(jobs: list[dict], retries: int, batch: bool) -> list[str]:
        try:
            return execute(state(), [Job.from_dict(j) for j in jobs], retries, batch=batch)
        except redis.RedisError as exc:  # failing would strand its calls as running
            raise Reject(exc, requeue=True) from exc

    @app.task(name=RUN_TASK, **options)
    def run(self: Task, job: dict) -> str:
        return run_calls([job], self.request.retries, False)[0]

    # A batch's hard time limit: its budget, plus the last call's own.
    @app.task(name=RUN_BATCH, time_limit=batch_budget(settings) + settings.hard_time_limit,
              **options)
    def run_batch(self: Task, jobs: list[dict]) -> list[str]:
        log.info("batch %s: %d calls", self.request.id, len(jobs))
        return run_calls(jobs, self.request.retries, True)


def execute(st: NodeState, jobs: list[Job], retries: int, *, batch: bool) -> list[str]:
    """Run the calls of one message; each call's outcome in words (the task's result)."""
    claims = st.tasks.claim(jobs, st.node, retries)
    runnable = [c.job or j for j, c in zip(jobs, claims, strict=True) if c.state == "run"]
    said = {j.tid: f"{j.tid}: skipped, {c.state}" for j, c in zip(jobs, claims, strict=True)
            if c.state != "run"}
    for line in said.values():
        log.info("tid=%s", line)
    if batch and retries > 0:  # its worker process died under it: each call goes alone
        _hand_on(st, runnable, "retried after its worker process was lost")
        return [said.get(j.tid, f"{j.tid}: sent on alone") for j in jobs]
    pending: list[tuple[Job, Finished]] = []
    failed: list[str] = []
    started = pending_since = time.monotonic()
    budget = batch_budget(st.settings)
    for i, job in enumerate(runnable):
        if batch and time.monotonic() - started >= budget:
            _hand_on(st, runnable[i:], f"over its budget of {budget:g} s")
            said.update({j.tid: f"{j.tid}: sent on alone" for j in runnable[i:]})
            break
        if pending and time.monotonic() - pending_since >= FLUSH_AFTER_S:
            pending = _flush(st, pending)
        bind_tid(job.tid)  # its log lines carry its own tid
        outcome = _outcome(st, job)
        if not pending:
            pending_since = time.monotonic()
        pending.append((job, outcome))
        said[job.tid] = f"{job.tid}: {outcome.status.value}"
        if outcome.status == Status.FAILED:
            failed.append(f"{job.tid}: {outcome.message}")
    _flush(st, pending)
    if failed:
        raise CallsFailed("; ".join(failed))
    return [said[j.tid] for j in jobs]


def _flush(st: NodeState, pending: list[tuple[Job, Finished]]) -> list:
    """Store outcomes, then log them (an answer never waits for its log line): each
    failure on a line of its own, the calls that succeeded together on one line."""
    if pending:
        _store(st, pending)
    ok = [(job.tid, outcome.exec_ms or 0.0) for job, outcome in pending
          if outcome.status == Status.SUCCEEDED]
    if len(ok) == 1:
        log.info("tid=%s succeeded in %.2f ms", *ok[0])
    elif ok:
        bind_tid("")  # the line is about several calls: `tids`, not the last one's tid
        log.info("%d calls succeeded in %.2f ms: %s", len(ok), sum(ms for _, ms in ok),
                 " ".join(tid for tid, _ in ok), extra={"tids": [tid for tid, _ in ok]})
    for job, outcome in pending:
        if outcome.status == Status.FAILED and outcome.cause != Cause.INTERNAL:
            log.info("tid=%s failed: %s", job.tid, outcome.message)  # internal: logged already
    return []


def _hand_on(st: NodeState, jobs: list[Job], why: str) -> None:
    sent = recovery.take_over(st.tasks, st.calls, st.node, st.node, [j.tid for j in jobs])
    log.info("batch: %d of its calls go on alone (%s)", sent, why)


def _store(st: NodeState, done: list[tuple[Job, Finished]]) -> None:
    """Store outcomes; when Redis is full, each says so in its record if a small
    write still fits (if not, the message is requeued and runs again later)."""
    try:
        stored = st.tasks.finish(done, st.node)
    except redis.RedisError as exc:
        if not storage_full(exc):
            raise
        log.warning("storage is full: %d results could not be stored: %s", len(done), exc)
        full = Finished(Status.FAILED, cause=Cause.STORAGE_FULL, message=(
            "storage is full: the task ran, but Redis refused to store its result "
            "(WASMQ_REDIS_MAXMEMORY_MB); call it again later"))
        stored = st.tasks.finish([(job, full) for job, _ in done], st.node)
    for (job, _), ok in zip(done, stored, strict=True):
        if not ok:
            log.info("tid=%s finished already (run again after its node was taken for "
                     "dead); its first answer stands", job.tid)


def _outcome(st: NodeState, job: Job) -> Finished:
    if job.data is None:
        return Finished(Status.FAILED, cause=Cause.MISSING_DATA,
                        message="the task's input has expired")
    limits = st.limits.narrowed(job.limits)
    sha = job.sha256
    try:
        prepared = st.runtime.prepare(sha, lambda: _binary(st, sha))
        outcome = st.runtime.run(prepared, job.data, limits)
    except ModuleFailed as exc:
        return Finished(Status.FAILED, message=exc.message, cause=exc.cause,
                        stdout=exc.stdout, stderr=exc.stderr)
    except TaskFailed as exc:
        return Finished(Status.FAILED, message=exc.message, cause=exc.cause)
    except redis.RedisError:
        raise  # the record cannot be written now; the message is requeued
    except Exception as exc:  # a bug of ours must fail the task, not leave it running
        log.exception("tid=%s: internal error", job.tid)
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
