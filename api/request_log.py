"""One structured log line per API request, carrying the task id it concerns.

An ASGI middleware around the app, so a request costs no Quart hook: the status
comes from the reply's start, the tid from the path (`/retrieve/<tid>`) or from the
scope, where the submit route leaves the tid it made (`TID_KEY`). The tid is bound
before the app runs, so any line logged while serving the request carries it too.
Probes and scrapes are not logged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from wasmq.broker.logs import bind_tid

log = logging.getLogger("wasmq.gateway.request")

QUIET = frozenset({"/healthz", "/metrics"})
TID_KEY = "wasmq.tid"  # scope key: the tid a submission created
NAMED = {"task": "cfid", "functions": "cfid", "file": "cfid", "retrieve": "tid"}


def _named(path: str) -> tuple[str, str]:
    """(cfid, tid) as the path names them: /task/<cfid>, /retrieve/<tid>..."""
    parts = path.split("/", 3)
    kind = NAMED.get(parts[1]) if len(parts) > 2 else None
    name = parts[2].removesuffix(".wasm") if kind else ""
    return (name, "") if kind == "cfid" else ("", name)


class RequestLog:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in QUIET:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        cfid, tid = _named(scope["path"])
        bind_tid(tid)
        status = 0

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            log.info("%s %s %s", scope["method"], scope["path"], status,
                     extra={"status": status, "cfid": cfid, "tid": scope.get(TID_KEY, tid),
                            "ms": round((time.perf_counter() - started) * 1000, 3)})
