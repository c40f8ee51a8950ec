"""The Scailable reply shape, built in one place for every route and error.

`statusCode` 1 = done, 5 = still queued or running, 0 = failed; the six
fields always keep their meaning, extras (status, logs, timings, node) follow.
"""

from __future__ import annotations

from typing import Any

from wasmq.broker.clock import iso
from wasmq.broker.protocol.record import Status, TaskRecord

DONE, FAILED, PENDING = 1, 0, 5


def reply(status_code: int, *, message: str, tid: str = "", result: str = "",
          time_out: bool = False, result_url: str = "", **extra: Any) -> dict[str, Any]:
    body = {"statusCode": status_code, "result": result, "tid": tid, "message": message,
            "timeOut": time_out, "resultUrl": result_url}
    body.update(extra)
    return body


def error_body(message: str, tid: str = "") -> dict[str, Any]:
    return reply(FAILED, message=message, tid=tid)


def task_reply(record: TaskRecord, result_url: str, *, as_bytes: bool = False,
               unserved: bool = False) -> tuple[dict[str, Any], int]:
    """The reply for a task record and its HTTP status (200 or 202); `unserved`: its
    queue has no live node (it waits for one)."""
    extra = {"status": record.status.value, "cfid": record.cfid, "node": record.node,
             "worker": record.worker, "queue": record.queue,
             "attempts": record.attempts, "timings": _timings(record),
             "logs": {"stdout": record.stdout, "stderr": record.stderr}}
    if record.status == Status.SUCCEEDED:
        output = record.result or b""
        result: Any = output if as_bytes else output.decode("utf-8", errors="replace")
        return reply(DONE, result=result, tid=record.tid, result_url=result_url,
                     message=f"Result returned and available at {result_url}.",
                     **extra), 200
    if record.status == Status.FAILED:
        return reply(FAILED, tid=record.tid, result_url=result_url, cause=record.cause,
                     message=f"Task failed: {record.message}", **extra), 200
    state = "is still queued" if record.status == Status.QUEUED else "is still running"
    if record.status == Status.QUEUED and unserved:
        state = f'is still queued: no live node consumes queue "{record.queue}"'
    return reply(PENDING, tid=record.tid, time_out=True, result_url=result_url,
                 message=f"Task {state}; the result will be available at {result_url}.",
                 **extra), 202


def _timings(r: TaskRecord) -> dict[str, Any]:
    def ms(a: float | None, b: float | None) -> float | None:
        return round((b - a) * 1000, 3) if a is not None and b is not None else None

    return {"queuedAt": iso(r.createdAt), "startedAt": iso(r.startedAt),
            "finishedAt": iso(r.finishedAt), "queueMs": ms(r.createdAt, r.startedAt),
            "execMs": round(r.execMs, 3) if r.execMs is not None else None,
            "totalMs": ms(r.createdAt, r.finishedAt)}
