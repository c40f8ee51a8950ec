"""A compute node: the Celery app with the wasm tasks, and what a node does besides,
through Celery's signals: logs with the tid, a heartbeat (liveness, `/metrics`,
taking over dead nodes' calls), and failing a call whose worker process Celery
killed or lost too often. `wasmq worker` and `celery -A wasmq.workers.celery_main`
both build the app here.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from contextlib import suppress
from functools import cached_property
from pathlib import Path

import redis
from celery import Celery, Task, signals
from celery.exceptions import TimeLimitExceeded, WorkerLostError

from wasmq.broker import metrics
from wasmq.broker.causes import Cause
from wasmq.broker.celery_app import make_celery
from wasmq.broker.connections import SOCKET_TIMEOUT, new_client
from wasmq.broker.logs import bind_tid, setup_logging
from wasmq.broker.protocol import recovery
from wasmq.broker.protocol.calls import Calls
from wasmq.broker.protocol.queue import Finished, Job, TaskQueue
from wasmq.broker.protocol.record import Status
from wasmq.broker.settings import Settings
from wasmq.workers.tasks import register_tasks

log = logging.getLogger("wasmq.node")
_HOW = re.compile(r"prematurely: (.+?)(?:\s+Job: \d+)?\.?$")


def build_worker_app(settings: Settings, heartbeat_file: Path | None = None) -> Celery:
    app = make_celery(settings)
    register_tasks(app, settings)
    recovery.identity()  # made here, in the main process, before the pool forks
    node = Node(app, settings, heartbeat_file)
    signals.setup_logging.connect(lambda **_: setup_logging(settings.log_format),
                                  weak=False, dispatch_uid="wasmq-logging")
    signals.task_prerun.connect(lambda task_id="", **_: bind_tid(task_id), weak=False,
                                dispatch_uid="wasmq-tid")
    signals.task_postrun.connect(lambda **_: bind_tid(""), weak=False,
                                 dispatch_uid="wasmq-tid-reset")
    signals.task_failure.connect(node.on_failure, weak=False, dispatch_uid="wasmq-failure")
    signals.worker_init.connect(node.start, weak=False, dispatch_uid="wasmq-heartbeat")
    signals.worker_shutdown.connect(node.stop, weak=False, dispatch_uid="wasmq-heartbeat-end")
    return app


# Celery 5.7 stops a whole worker on "Unrecoverable error: AttributeError('NoneType' object
# has no attribute 'hostname')" when its broker connection drops while it holds messages
# not yet acknowledged (a Redis restart or a Sentinel failover under load): the consumer
# closes its connection twice and kombu's second close has no connection left to read.
# A node that was serving and stopped that way starts again, as the same process, rather
# than leave its queues unserved; one stopped by a signal, or that never came up, stops.
RESTART_DELAY_S = 1.0


def run_node(app: Celery, argv: list[str]) -> None:
    """Celery's `worker` command, started again in this process (`exec`: same PID, a
    fresh Celery and a fresh node identity) when it stopped on an error of its own."""
    seen = {"ready": False, "asked": False, "code": None}
    signals.worker_ready.connect(lambda **_: seen.update(ready=True), weak=False,
                                 dispatch_uid="wasmq-ready")
    signals.worker_shutting_down.connect(lambda **_: seen.update(asked=True), weak=False,
                                         dispatch_uid="wasmq-asked-to-stop")
    signals.worker_shutdown.connect(
        lambda sender=None, **_: seen.update(code=getattr(sender, "exitcode", None)),
        weak=False, dispatch_uid="wasmq-exit-code")
    app.worker_main(argv)  # returns, whatever the exit code: the signals tell it
    code = seen["code"]
    if not code or seen["asked"] or not seen["ready"]:
        sys.exit(code or 0)
    log.warning("the Celery worker stopped with exit code %s (its error is above); "
                "starting it again in %g s", code, RESTART_DELAY_S)
    time.sleep(RESTART_DELAY_S)
    os.execv(sys.executable, [sys.executable, "-m", "wasmq", *sys.argv[1:]])


def how_it_ended(exc: BaseException) -> str:
    """E.g. "signal 9 (SIGKILL)" or "exitcode 3", from billiard's message."""
    match = _HOW.search(str(exc))
    return match.group(1) if match else str(exc)


class Node:
    """The main process's part: heartbeat thread, and failures Celery decides there."""

    def __init__(self, app: Celery, settings: Settings, heartbeat_file: Path | None) -> None:
        self.app, self.settings, self.heartbeat_file = app, settings, heartbeat_file
        self.calls = Calls(app, settings.inline_input_kb * 1024)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker, self._beaten = None, False

    @cached_property
    def tasks(self) -> TaskQueue:
        """A client of the main process's own: never the pool's shared one, whose lock
        a thread of this process might hold across a fork."""
        return TaskQueue.from_settings(new_client(self.settings), self.settings)

    # -- heartbeat ------------------------------------------------------------------

    def start(self, sender: object = None, **_: object) -> None:
        """Beats once before the consumer starts: no call is claimed by an unlisted node."""
        self._worker = sender
        with suppress(redis.RedisError):  # the thread keeps trying
            self._beat()
        self._thread = threading.Thread(target=self._run, name="wasmq-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        node = recovery.identity()
        was_new, _ = recovery.beat(self.tasks, self.calls, node,
                                   self.settings.consumed_queues)
        if was_new and self._beaten:
            log.warning("this node (%s) was silent for over %g s and taken for dead: the "
                        "calls it runs were sent again, and the first answer stored wins",
                        node, recovery.STALE_S)
        self._beaten = True

    def _run(self) -> None:
        warned, count = False, 0
        beats_per_report = max(1, round(metrics.HEARTBEAT_S / recovery.HEARTBEAT_S))
        node = recovery.identity()
        size = int(getattr(self._worker, "concurrency", 0) or 0)
        while True:
            if self.heartbeat_file is not None:
                self.heartbeat_file.touch()
            try:
                self._beat()
                if count % beats_per_report == 0:
                    metrics.heartbeat(self.tasks.redis, node, size)
                warned = False
            except redis.RedisError as exc:
                if not warned:
                    log.warning("heartbeat cannot reach Redis (%s); still trying", exc)
                warned = True
            count += 1
            if self._stop.wait(recovery.HEARTBEAT_S):
                break
        with suppress(redis.RedisError):  # if not, it goes silent and live nodes take over
            metrics.forget_worker(self.tasks.redis, node, size)
            recovery.leave(self.tasks, self.calls, node)

    def stop(self, **_: object) -> None:
        """After the pool stopped: what it still holds goes on elsewhere (`leave`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=SOCKET_TIMEOUT + 1)

    # -- failures decided in the main process -----------------------------------------

    def on_failure(self, exception: BaseException | None = None, args: tuple = (),
                   sender: Task | None = None, **_: object) -> None:
        """Celery failed the task (its process killed past the hard time limit, or lost
        WASMQ_MAX_ATTEMPTS times): without this its calls would say "running"."""
        if not isinstance(exception, (TimeLimitExceeded, WorkerLostError)) or not args:
            return
        raw = args[0] if isinstance(args[0], list) else [args[0]]
        jobs = [Job.from_dict(j) for j in raw if isinstance(j, dict) and "tid" in j]
        if not jobs:
            return
        node = recovery.identity()
        try:
            if len(jobs) > 1:  # a batch: its calls go on alone, the culprit fails alone
                recovery.take_over(self.tasks, self.calls, node, node,
                                   [j.tid for j in jobs])
                return
            if isinstance(exception, TimeLimitExceeded):
                outcome = Finished(Status.FAILED, cause=Cause.TIMEOUT, message=(
                    f"hard time limit of {self.settings.hard_time_limit:g} s exceeded: the "
                    f"module could not be interrupted (blocked in a host call or still "
                    f"compiling), so its worker process was replaced"))
            else:
                log.warning("tid=%s: its worker process ended (%s) while running it",
                            jobs[0].tid, how_it_ended(exception))
                outcome = recovery.exhausted(self.settings.max_attempts,
                                             self.settings.max_attempts,
                                             how_it_ended(exception))
            self.tasks.finish([(jobs[0], outcome)], node)
        except redis.RedisError:
            log.warning("could not record the failure of %s", jobs[0].tid, exc_info=True)
