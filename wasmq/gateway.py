"""Serve the gateway on Granian: HTTP in Rust, the Quart app on an event loop per process.

Granian parses and keeps connections in Rust (about 0.2 ms of CPU per request,
against gunicorn gthread's 0.35 ms). Its ASGI interface runs the app (api/app.py)
on an event loop in each process: calls waiting for their task wait there, holding
no thread, and each caller gets a bounded share of the threads that run blocking
views (api/bounds.py).
"""

from __future__ import annotations

import gc
import logging
import os
import resource

from granian import Granian
from granian.constants import Interfaces
from granian.http import HTTP1Settings
from quart import Quart

from wasmq.api.app import create_app as create_gateway_app
from wasmq.broker.logs import setup_logging
from wasmq.broker.settings import Settings
from wasmq.instance import claim_port
from wasmq.process import die_with_parent

# A factory: every server process builds its own app from the WASMQ_* environment.
APP = "wasmq.gateway:create_app"


def create_app() -> Quart:
    """The app of one server process, which must not outlive the gateway's main
    process: killed alone, the main process would leave it serving the port."""
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # the main process died before we asked to follow it
        os._exit(1)
    _open_files_as_allowed()
    app = create_gateway_app(Settings.from_env())
    app.extensions["wasmq"].jobs.start()  # resume model builds a dead gateway left
    # What is built so far (the app, Celery's, the clients) lives as long as the process:
    # kept out of the cyclic collector's passes, which every few requests walked it.
    gc.collect()  # nothing left for the collector to free is frozen with the rest
    gc.freeze()
    return app


def _open_files_as_allowed() -> None:
    """Every held connection is a descriptor: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _ThreadCountNotice(logging.Filter):
    """Granian warns that more threads than cores "seems quite high"; a gateway's
    threads mostly sleep while their tasks run, so many are intended."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Python threads" not in record.getMessage()


# Granian's own messages go through our handlers (JSON or text, like the rest).
LOG_CONFIG = {
    "filters": {"thread_count": {"()": _ThreadCountNotice}},
    "loggers": {"_granian": {"handlers": [], "propagate": True, "filters": ["thread_count"]}},
}


# Open connections per process. Granian's `backpressure` counts connections,
# idle keep-alive ones included; calls waiting for their task each hold one, and
# WASMQ_MAX_WAITING (4096) of them may wait per process.
CONNECTIONS = 8192
# Connections the kernel queues before the server accepts them (capped by
# net.core.somaxconn). A burst beyond it drops SYNs, and the client's retry
# waits 1 s, then 3 s: a flood of connects would stall everyone's.
BACKLOG = 8192
# An idle keep-alive connection is closed after this long, as gunicorn's was.
KEEPALIVE_MS = 5000


def serve(settings: Settings, host: str, port: int) -> None:
    """Serve until stopped; `InUse` before anything starts if the port is taken."""
    port_lock = claim_port(host, port)  # held until this process exits
    setup_logging(settings.log_format)  # before the fork: every process inherits it
    Granian(APP, factory=True, address=host, port=port, interface=Interfaces.ASGI,
            workers=settings.gateway_processes, backpressure=CONNECTIONS, backlog=BACKLOG,
            http1_settings=HTTP1Settings(header_read_timeout=KEEPALIVE_MS),
            respawn_failed_workers=True,
            respawn_interval=0.5, workers_kill_timeout=10, log_level="warning",
            log_dictconfig=LOG_CONFIG, log_access=False).serve()
    port_lock.release()
