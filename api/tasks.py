"""`POST /task/<cfid>` and `GET /retrieve/<tid>`: submit a call, wait, poll."""

from __future__ import annotations

import math
import time

from flask import Blueprint, request, url_for
from flask.typing import ResponseReturnValue

from wasmq.api.access import require_key_if_private
from wasmq.api.envelope import parse_envelope, request_body
from wasmq.api.front import handoff
from wasmq.api.negotiation import respond, wants_msgpack
from wasmq.api.ratelimit import caller
from wasmq.api.replies import task_reply
from wasmq.api.services import Services, services
from wasmq.api.waiter import Waiter
from wasmq.broker.errors import BadRequest, NotFound
from wasmq.broker.logs import bind_tid
from wasmq.broker.protocol.record import Status, TaskRecord, new_tid

bp = Blueprint("tasks", __name__)

MAX_WAIT_S = 300.0


def parse_wait(raw: str | None, default: float) -> float:
    if raw is None or raw == "":
        return default
    try:
        wait = float(raw)
    except ValueError:
        raise BadRequest(f"wait={raw!r} is not a number of seconds") from None
    if math.isnan(wait) or wait < 0 or wait > MAX_WAIT_S:
        raise BadRequest(f"wait must be between 0 and {MAX_WAIT_S:g} seconds, got {raw!r}")
    return wait


def result_url(svc: Services, tid: str) -> str:
    if svc.settings.public_url:
        return f"{svc.settings.public_url.rstrip('/')}/retrieve/{tid}"
    return url_for("tasks.retrieve", tid=tid, _external=True)


@bp.post("/task/<cfid>")
def submit(cfid: str) -> ResponseReturnValue:
    svc = services()
    wait = parse_wait(request.args.get("wait"), svc.settings.sync_wait)
    svc.submissions.function(cfid)  # 404 before reading the body
    data = parse_envelope(request_body(), request.mimetype)
    tid = new_tid()
    bind_tid(tid)
    front = handoff(request.environ)
    waiter = None
    if wait > 0 and (front is None or front.can_wait):
        svc.listener.start()  # listening before the task can finish: no wake-up is missed
        waiter = svc.listener.register(tid)
    handed_over = False
    try:
        record = svc.submissions.submit(cfid, data, caller(svc.settings), tid=tid)
        if waiter is not None and front is not None:  # the front waits, holding no thread
            front.hold(tid, waiter, time.monotonic() + wait, result_url(svc, tid),
                       wants_msgpack())
            handed_over = True
        elif waiter is not None:
            return _wait_for(svc, tid, waiter, time.monotonic() + wait)
    finally:
        if waiter is not None and not handed_over:
            svc.listener.unregister(tid, waiter)
    # The reply as it stands now (wait=0 promises an immediate 5, whatever a fast
    # worker did meanwhile); the front replaces it if the task finishes in time.
    return _reply(svc, tid, record)


def _wait_for(svc: Services, tid: str, waiter: Waiter,
              deadline: float) -> ResponseReturnValue:
    """Sleep until woken; a wake-up without the record only means "look again"
    (it may be spurious)."""
    while True:
        waiter.event.wait(max(0.0, deadline - time.monotonic()))
        waiter.event.clear()
        record = waiter.record or svc.tasks.get(tid)
        if record is None or record.status.finished or time.monotonic() >= deadline:
            return _reply(svc, tid, record)


@bp.get("/retrieve/<tid>")
def retrieve(tid: str) -> ResponseReturnValue:
    return _answer(services(), tid)


def _answer(svc: Services, tid: str) -> ResponseReturnValue:
    return _reply(svc, tid, svc.tasks.get(tid))


def _reply(svc: Services, tid: str, record: TaskRecord | None) -> ResponseReturnValue:
    if record is None:
        raise NotFound(f"task '{tid}' is unknown or its result has expired")
    require_key_if_private(svc.settings, record.private, "retrieving this task")
    as_msgpack = wants_msgpack()
    unserved = record.status == Status.QUEUED and not svc.live_queues.serves(record.queue)
    body, status = task_reply(record, result_url(svc, tid), as_bytes=as_msgpack,
                              unserved=unserved)
    return respond(body, status, as_msgpack=as_msgpack)


