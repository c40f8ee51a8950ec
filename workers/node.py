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
from celery import Celery, Task, bootsteps, signals
from celery.exceptions import TimeLimitExceeded

from wasmq.broker import metrics, nodes
from wasmq.broker.causes import Cause
from wasmq.broker.celery_app import make_celery
from wasmq.broker.connections import SOCKET_TIMEOUT, new_client
from wasmq.broker.logs import bind_tid, setup_logging
from wasmq.broker.protocol.messages import Job, JobMessages
from wasmq.broker.protocol.queue import Finished, TaskQueue
from wasmq.broker.protocol.record import Status
from wasmq.broker.protocol.resend import tend_queue
from wasmq.broker.settings import Settings
from wasmq.workers import events
from wasmq.workers.batch import split
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
                   sender: Task | None = None, **_: object) -> None:
        """Celery killed a process past the hard limit and acks the message:
        without this the record would say "running" until it expired."""
        if not isinstance(exception, TimeLimitExceeded) or not args:
            return
        if not queues:
            queues.append(TaskQueue.from_settings(_own_client(settings), settings))
        if isinstance(args[0], list) and sender is not None:
            # A batch: its unfinished calls go on alone; the one that hung meets the
            # hard limit again by itself and fails then, the others run.
            jobs = [Job.from_dict(j) for j in args[0] if isinstance(j, dict)]
            try:
                split(queues[0], JobMessages(sender.app, settings.queue), jobs, "",
                      undo=False)
            except redis.RedisError:
                log.warning("could not send on the batch of %s", jobs[0].tid if jobs else "-",
                            exc_info=True)
            return
        if not isinstance(args[0], dict) or "tid" not in args[0]:
            return
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
    return new_client(settings)


class Heartbeat(bootsteps.StartStopStep):
    """Says every second that this node is alive, and puts back the messages of
    nodes that stopped saying so (broker/nodes.py); every few seconds also in
    the gateway's `/metrics` count of live workers, and by touching a file that
    a liveness probe checks (`wasmq alive FILE`).

    A thread rather than Celery's timer: the timer stops while the consumer
    waits for Redis to come back, and a node waiting for Redis is alive. It
    beats once before the consumer starts (Celery starts its Consumer step
    last), so no message is held by a node that was never listed, and it goes on
    beating until the worker has shut down: Celery stops this step before the
    pool, and a node that stopped beating while its last tasks finish would have
    them put back and run twice.
    """

    label = "wasmq heartbeat"

    def __init__(self, parent: object, **kwargs: object) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: redis.Redis | None = None

    def start(self, worker: object) -> None:
        app = worker.app  # type: ignore[attr-defined]
        settings: Settings = app.wasmq_settings
        node, size = worker.hostname, worker.concurrency  # type: ignore[attr-defined]
        path: Path | None = app.wasmq_heartbeat_file
        client = self._client = _own_client(settings)
        self._queues = (settings.queue,)  # the queue this node takes messages from
        try:
            self._beat(client)
        except redis.RedisError:
            pass  # the thread keeps trying
        self._thread = threading.Thread(target=self._run, args=(client, node, size, path, app),
                                        name="wasmq-heartbeat", daemon=True)
        self._thread.start()
        signals.worker_shutdown.connect(self._end, weak=False, dispatch_uid="wasmq-heartbeat")

    def _beat(self, client: redis.Redis) -> None:
        was_new, dead, restored = nodes.beat(client, nodes.identity(), self._queues)
        if dead:
            log.warning("%d node(s) stopped beating for %g s: %d of their unacknowledged "
                        "messages are back on the queue", dead, nodes.STALE_S, restored)
        if was_new and self._beaten:
            log.warning("this node (%s) was silent for over %g s and taken for dead: its "
                        "messages went back to the queue, so tasks it is still running may "
                        "also run elsewhere", nodes.identity(), nodes.STALE_S)
        self._beaten = True

    _beaten = False
    _queues: tuple[str, ...] = ()

    def _run(self, client: redis.Redis, node: str, size: int, path: Path | None,
             app: Celery) -> None:
        warned = False
        beats_per_report = max(1, round(metrics.HEARTBEAT_S / nodes.HEARTBEAT_S))
        count = 0
        while True:
            if path is not None:
                path.touch()
            try:
                self._beat(client)
                if count % beats_per_report == 0:
                    metrics.heartbeat(client, node, size)
                    tend_queue(app, client)
                warned = False
            except redis.RedisError as exc:
                if not warned:
                    log.warning("heartbeat cannot reach Redis (%s); still trying", exc)
                warned = True
            count += 1
            if self._stop.wait(nodes.HEARTBEAT_S):
                break
        try:
            metrics.forget_worker(client, node, size)
            nodes.leave(client, nodes.identity(), self._queues)
        except redis.RedisError:
            pass  # it goes stale on its own, and live nodes restore what it held

    def _end(self, **_: object) -> None:
        """After the pool has stopped (Celery's worker_shutdown): what is still
        held goes back to the queue, and the node is no longer listed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=SOCKET_TIMEOUT + 1)
