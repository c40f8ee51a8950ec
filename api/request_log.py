"""One structured log line per API request, carrying the task id it concerns.

The tid is bound where it becomes known (the submit route, or the URL of
`/retrieve/<tid>`), so any line logged while serving the request, a Redis
warning included, carries it too. Probes and scrapes are not logged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from quart import Quart, Response, g, request

from wasmq.broker.logs import TID, bind_tid

log = logging.getLogger("wasmq.gateway.request")

QUIET = frozenset({"meta.healthz", "metrics.scrape"})


@dataclass(frozen=True)
class RequestLine:
    method: str
    path: str
    cfid: str
    tid: str
    started: float  # time.perf_counter()

    def log(self, status: int) -> None:
        ms = (time.perf_counter() - self.started) * 1000
        log.info("%s %s %s", self.method, self.path, status,
                 extra={"status": status, "ms": round(ms, 3), "cfid": self.cfid,
                        "tid": self.tid})


def register_request_log(app: Quart) -> None:
    @app.before_request
    async def started() -> None:
        g.started = time.perf_counter()
        bind_tid((request.view_args or {}).get("tid", ""))

    @app.after_request
    async def finished(response: Response) -> Response:
        if request.endpoint in QUIET:
            return response
        RequestLine(request.method, request.path, (request.view_args or {}).get("cfid", ""),
                    TID.get(), g.get("started", time.perf_counter())).log(response.status_code)
        return response
    # Each request runs in a task of its own, with a copy of the context: the tid it
    # binds is gone with it.
