"""`POST /task/<cfid>` and `GET /retrieve/<tid>`: submit a call, wait, poll."""

from __future__ import annotations

import math
import time

import msgpack
from flask import Blueprint, request, url_for
from flask.typing import ResponseReturnValue

from wasmq.api.access import require_key_if_private
from wasmq.api.envelope import parse_envelope, request_body
from wasmq.api.negotiation import respond, wants_msgpack
from wasmq.api.replies import task_reply
from wasmq.api.services import Services, services
from wasmq.api.waiter import Waiter
from wasmq.broker.errors import BadRequest, NotFound, TooLarge
from wasmq.broker.limits import Limits
from wasmq.broker.logs import bind_tid
from wasmq.broker.records import TaskRecord, new_tid
from wasmq.broker.registry import FunctionRecord

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
    counted = svc.submissions.known(cfid) is None
    if counted:  # a function new to this process: 404 or 429 before reading the body
        svc.submissions.look_up(cfid)
    data = parse_envelope(request_body(), request.mimetype)
    tid = new_tid()
    bind_tid(tid)
    inline = len(data) <= svc.settings.inline_input_kb * 1024

    def build(function: FunctionRecord) -> tuple:
        require_key_if_private(svc.settings, function.private, "calling this function")
        limits = Limits.from_settings(svc.settings).narrowed(function.limits)
        if len(data) > limits.max_input:
            raise TooLarge(f"input.data is {len(data)} bytes; the input limit of this function "
                           f"is {limits.max_input_mb:g} MB")
        job = {"tid": tid, "sha256": function.sha256, "data": data if inline else None,
               "limits": function.limits}
        return (TaskRecord(tid=tid, cfid=cfid, private=function.private),
                None if inline else data, msgpack.packb(job, use_bin_type=True),
                (svc.settings.queue, svc.jobs.encode(job)))

    waiter = None
    if wait > 0:  # listening before the task can finish, so no wake-up is missed
        svc.listener.start()
        waiter = svc.listener.register(tid)
    try:
        record = svc.submissions.create(cfid, build, counted=counted)[0]
        if waiter is not None:
            return _wait_for(svc, tid, waiter, time.monotonic() + wait)
    finally:
        if waiter is not None:
            svc.listener.unregister(tid, waiter)
    # wait=0 promises an immediate 5, whatever a fast worker did meanwhile.
    return _reply(svc, tid, record)


def _wait_for(svc: Services, tid: str, waiter: Waiter,
              deadline: float) -> ResponseReturnValue:
    """Sleep until woken; a wake-up without the record only means "look again"
    (it may be spurious)."""
    while True:
        waiter.event.wait(max(0.0, deadline - time.monotonic()))
        waiter.event.clear()
        record = waiter.record or svc.records.get(tid)
        if record is None or record.status.finished or time.monotonic() >= deadline:
            return _reply(svc, tid, record)


@bp.get("/retrieve/<tid>")
def retrieve(tid: str) -> ResponseReturnValue:
    return _answer(services(), tid)


def _answer(svc: Services, tid: str) -> ResponseReturnValue:
    return _reply(svc, tid, svc.records.get(tid))


def _reply(svc: Services, tid: str, record: TaskRecord | None) -> ResponseReturnValue:
    if record is None:
        raise NotFound(f"task '{tid}' is unknown or its result has expired")
    require_key_if_private(svc.settings, record.private, "retrieving this task")
    as_msgpack = wants_msgpack()
    body, status = task_reply(record, result_url(svc, tid), as_bytes=as_msgpack)
    return respond(body, status, as_msgpack=as_msgpack)


