"""One structured log line per API request, carrying the task id it concerns.

The tid is bound where it becomes known (the submit route, or the URL of
`/retrieve/<tid>`), so any line logged while serving the request, a Redis
warning included, carries it too. Probes and scrapes are not logged.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

from wasmq.broker.logs import TID, bind_tid

log = logging.getLogger("wasmq.gateway.request")

QUIET = frozenset({"meta.healthz", "metrics.scrape"})


def register_request_log(app: Flask) -> None:
    @app.before_request
    def started() -> None:
        g.started = time.perf_counter()
        bind_tid((request.view_args or {}).get("tid", ""))

    @app.after_request
    def finished(response: Response) -> Response:
        if request.endpoint not in QUIET:
            ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
            log.info("%s %s %s", request.method, request.path, response.status_code,
                     extra={"status": response.status_code, "ms": round(ms, 3),
                            "cfid": (request.view_args or {}).get("cfid", ""),
                            "tid": TID.get()})
        return response

    @app.teardown_request
    def forget(exc: BaseException | None) -> None:
        bind_tid("")  # threads serve many requests
