"""Serve the gateway on Granian: HTTP in Rust, the Flask app on a pool of threads per process.

Until issue 6 the gateway ran on gunicorn's gthread worker. Under 64 keep-alive
clients that cost about 0.35 ms of CPU per request before Flask saw it
(accept loop, parser, thread hand-offs), a third of the gateway's CPU per
task; Granian parses and keeps connections in Rust and costs about 0.2 ms
(`python -m bench` shows the effect end to end). Threads, not an event loop,
because a request waiting for its task blocks in `threading.Event.wait`.
"""

from __future__ import annotations

import logging
import os

from flask import Flask
from granian import Granian
from granian.constants import Interfaces
from granian.http import HTTP1Settings

from wasmq.broker.logs import setup_logging
from wasmq.broker.settings import Settings
from wasmq.instance import claim_port
from wasmq.process import die_with_parent

# A factory: every server process builds its own app from the WASMQ_* environment.
APP = "wasmq.gateway:create_app"


def create_app() -> Flask:
    """The app of one server process, which must not outlive the gateway's main
    process: killed alone, the main process would leave it serving the port."""
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # the main process died before we asked to follow it
        os._exit(1)
    from wasmq.api.app import create_app as build

    return build()


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
# idle keep-alive ones included, not requests: the threads bound the requests.
CONNECTIONS = 1024
# An idle keep-alive connection is closed after this long, as gunicorn's was.
KEEPALIVE_MS = 5000


def serve(settings: Settings, host: str, port: int) -> None:
    """Serve until stopped; `InUse` before anything starts if the port is taken."""
    port_lock = claim_port(host, port)  # held until this process exits
    setup_logging(settings.log_format)  # before the fork: every process inherits it
    Granian(APP, factory=True, address=host, port=port, interface=Interfaces.WSGI,
            workers=settings.gateway_processes, blocking_threads=settings.gateway_threads,
            backpressure=CONNECTIONS,
            http1_settings=HTTP1Settings(header_read_timeout=KEEPALIVE_MS),
            respawn_failed_workers=True,
            respawn_interval=0.5, workers_kill_timeout=10, log_level="warning",
            log_dictconfig=LOG_CONFIG, log_access=False).serve()
    port_lock.release()
