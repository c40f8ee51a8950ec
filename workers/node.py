"""A compute node: the Celery app with the wasm task, plus what a node does
besides running tasks (structured logs with the tid, a heartbeat for
`/metrics` and liveness probes, failing a task Celery had to kill).

`wasmq worker` and `celery -A wasmq.workers.celery_main` both build the app here,
so Flower and `celery inspect` see the same node as the CLI starts.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import redis
from celery import Celery, bootsteps, signals
from celery.exceptions import TimeLimitExceeded

from wasmq.broker import metrics
from wasmq.broker.causes import Cause
from wasmq.broker.celery_app import make_celery
from wasmq.broker.connections import SOCKET_CONNECT_TIMEOUT, SOCKET_TIMEOUT
from wasmq.broker.logs import bind_tid, setup_logging
from wasmq.broker.protocol.messages import Job
from wasmq.broker.protocol.queue import Finished, TaskQueue
from wasmq.broker.protocol.record import Status
from wasmq.broker.protocol.resend import tend_queue
from wasmq.broker.settings import Settings
from wasmq.workers import events
from wasmq.workers.tasks import register_tasks

log = logging.getLogger("wasmq.node")


def build_worker_app(settings: Settings, heartbeat_file: Path | None = None) -> Celery:
    app = make_celery(settings)
    app.conf.worker_consumer = events.PATH
    register_tasks(app, settings)
    app.steps["worker"].add(Heartbeat)
    app.wasmq_settings = settings  # type: ignore[attr-defined]
    app.wasmq_heartbeat_file = heartbeat_file  # type: ignore[attr-defined]
    _connect_signals(settings)
    return app


def _connect_signals(settings: Settings) -> None:
    # Celery leaves logging alone when setup_logging has a receiver.
    signals.setup_logging.connect(lambda **_: setup_logging(settings.log_format),
                                  weak=False, dispatch_uid="wasmq-logging")
    signals.task_prerun.connect(_bind_task_tid, weak=False, dispatch_uid="wasmq-tid")
    signals.task_postrun.connect(lambda **_: bind_tid(""), weak=False,
                                 dispatch_uid="wasmq-tid-reset")
    queues: list[TaskQueue] = []

    def on_failure(exception: BaseException | None = None, args: tuple = (),
                   **_: object) -> None:
        """Celery killed a process past the hard limit and acks the message:
        without this the record would say "running" until it expired."""
        if not isinstance(exception, TimeLimitExceeded) or not args:
            return
        if not isinstance(args[0], dict) or "tid" not in args[0]:
            return
        if not queues:
            queues.append(TaskQueue.from_settings(_own_client(settings), settings))
        job = Job.from_dict(args[0])
        try:
            queues[0].finish(job, Finished(Status.FAILED, cause=Cause.TIMEOUT, message=(
                f"hard time limit of {settings.hard_time_limit:g} s exceeded: the module "
                f"could not be interrupted (blocked in a host call or still compiling), "
                f"so its worker process was replaced")))
        except redis.RedisError:
            log.warning("could not record the hard time limit of %s", job.tid, exc_info=True)

    signals.task_failure.connect(on_failure, weak=False, dispatch_uid="wasmq-hard-limit")


def _bind_task_tid(args: tuple = (), **_: object) -> None:
    job = args[0] if args else None
    bind_tid(job.get("tid", "") if isinstance(job, dict) else "")


def _own_client(settings: Settings) -> redis.Redis:
    """Not the shared per-process client: its lock must never be held across a
    fork of a pool process by a thread of the main process."""
    return redis.Redis.from_url(settings.redis_url, socket_timeout=SOCKET_TIMEOUT,
                                socket_connect_timeout=SOCKET_CONNECT_TIMEOUT)


class Heartbeat(bootsteps.StartStopStep):
    """Says every few seconds that this node is alive: in Redis, where the
    gateway's `/metrics` counts live workers, and by touching a file that a
    liveness probe checks (`wasmq alive FILE`).

    A thread rather than Celery's timer: the timer stops while the consumer
    waits for Redis to come back, and a node waiting for Redis is alive.
    """

    label = "wasmq heartbeat"

    def __init__(self, parent: object, **kwargs: object) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, worker: object) -> None:
        app = worker.app  # type: ignore[attr-defined]
        settings: Settings = app.wasmq_settings
        node, size = worker.hostname, worker.concurrency  # type: ignore[attr-defined]
        path: Path | None = app.wasmq_heartbeat_file
        client = _own_client(settings)
        self._thread = threading.Thread(target=self._run, args=(client, node, size, path, app),
                                        name="wasmq-heartbeat", daemon=True)
        self._thread.start()

    def _run(self, client: redis.Redis, node: str, size: int, path: Path | None,
             app: Celery) -> None:
        warned = False
        while True:
            if path is not None:
                path.touch()
            try:
                metrics.heartbeat(client, node, size)
                tend_queue(app, client)
                warned = False
            except redis.RedisError as exc:
                if not warned:
                    log.warning("heartbeat cannot reach Redis (%s); still trying", exc)
                warned = True
            if self._stop.wait(metrics.HEARTBEAT_S):
                break
        try:
            metrics.forget_worker(client, node, size)
        except redis.RedisError:
            pass  # it goes stale on its own

    def stop(self, worker: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=SOCKET_TIMEOUT + 1)
