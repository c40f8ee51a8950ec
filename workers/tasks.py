"""The Celery task that runs one compute-function call on this node.

The job message carries the tid, the module's sha256, the input (or nothing
when it travelled by reference) and the limits, so a task costs one claim
round trip, a binary fetch only on a cache miss, and one finishing pipeline.
"""

from __future__ import annotations

import logging
import os
import socket
from functools import lru_cache

import redis
from celery import Celery
from celery.exceptions import Reject
from celery.signals import worker_process_init

from wasmq.broker.artifacts import Artifacts
from wasmq.broker.celery_app import RUN_TASK
from wasmq.broker.connections import get_redis, storage_full
from wasmq.broker.errors import WasmqError
from wasmq.broker.limits import Limits
from wasmq.broker.records import Status, TaskRecords
from wasmq.broker.settings import MB, Settings
from wasmq.broker.store import RedisStore
from wasmq.workers.prefetch import Prefetcher
from wasmq.workers.runtime import ModuleFailed, Runtime
from wasmq.workers.warmup import warm_up

log = logging.getLogger("wasmq.worker")


class NodeState:
    """What a worker process builds once, after the fork, and keeps."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        client = get_redis(settings)
        self.records = TaskRecords(client, settings.result_ttl)
        self.store = RedisStore(client)
        self.limits = Limits.from_settings(settings)
        self.runtime = Runtime(settings.module_cache_mb * MB, Artifacts(client))
        self.prefetcher = Prefetcher(self.runtime, client)
        self.node = f"{socket.gethostname()}:{os.getpid()}"


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
            warm_up(st.runtime, st.records, st.runtime.cache_bytes // 2)
        except redis.RedisError:  # Redis is down: the first task connects, or is redelivered
            log.warning("warm: 0 hot modules preloaded; Redis unreachable at process start")

    @app.task(name=RUN_TASK, acks_late=True, reject_on_worker_lost=True)
    def run(job: dict) -> None:
        try:
            execute(state(), job)
        except redis.RedisError as exc:
            # Failing would ack the message (acks_on_failure) and strand the
            # task as "running"; requeued, it runs again once Redis answers.
            raise Reject(exc, requeue=True) from exc


def execute(st: NodeState, job: dict) -> None:
    tid = job["tid"]
    data = job.get("data")
    if data is None:  # by reference: the claim hands the input over, so wait for it
        claim, data = st.records.claim(tid, st.node)
        if claim != "running":
            log.info("tid=%s skipped: record is %s", tid, claim)
            return
        outcome = _outcome(st, job, data)
    else:
        sent = st.records.claim_sent(tid, st.node)
        try:
            outcome = _outcome(st, job, data)
        finally:
            claim = sent.answer()
        if claim != "running":  # ran anyway; a finished record is not written again
            log.info("tid=%s skipped: record is %s", tid, claim)
            return
    status, fields = outcome
    try:
        st.records.finish(tid, status, **fields)
    except redis.RedisError as exc:
        if not storage_full(exc):
            raise
        # Say so in the record if a small write still fits; if not, the message is
        # requeued (`run`) and the task runs again once Redis has room.
        log.warning("tid=%s: storage is full, its result could not be stored: %s", tid, exc)
        st.records.finish(tid, Status.FAILED, message=(
            "storage is full: the task ran, but Redis refused to store its result "
            "(WASMQ_REDIS_MAXMEMORY_MB); call it again later"))


def _outcome(st: NodeState, job: dict, data: bytes | None) -> tuple[Status, dict]:
    """The task's result or failure, as `TaskRecords.finish` takes it."""
    tid = job["tid"]
    if data is None:
        return Status.FAILED, {"message": "the task's input has expired"}
    limits = st.limits.narrowed(job.get("limits"))
    sha = job["sha256"]
    try:
        prepared = st.runtime.prepare(sha, lambda: _binary(st, sha))
        outcome = st.runtime.run(prepared, data, limits)
    except ModuleFailed as exc:
        log.info("tid=%s failed: %s", tid, exc.message)
        return Status.FAILED, {"message": exc.message, "stdout": exc.stdout,
                               "stderr": exc.stderr}
    except WasmqError as exc:
        log.info("tid=%s failed: %s", tid, exc.message)
        return Status.FAILED, {"message": exc.message}
    except redis.RedisError:
        raise  # the record cannot be written now; the message is redelivered
    except Exception as exc:  # a bug of ours must fail the task, not leave it running
        log.exception("tid=%s: internal error", tid)
        return Status.FAILED, {"message": f"internal error in the worker ({type(exc).__name__})"}
    log.info("tid=%s succeeded in %.2f ms", tid, outcome.exec_ms)
    return Status.SUCCEEDED, {"result": outcome.output, "stdout": outcome.stdout,
                              "stderr": outcome.stderr, "exec_ms": outcome.exec_ms}


def _binary(st: NodeState, sha: str) -> bytes:
    data = st.store.get(sha)
    if data is None:
        raise WasmqError("the function's binary was deleted before the task ran")
    return data
