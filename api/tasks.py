"""`POST /task/<cfid>` and `GET /retrieve/<tid>`: submit a call, wait, poll.

A call is served on the event loop from start to end: its body is read, validated
against its function as this process knows it (api/submission.py), and sent with
the calls of its lane that arrive meanwhile (api/batcher.py); if it may wait, it
waits for the completion listener's wake-up (api/waiter.py) holding no thread, and
a client that hangs up ends its wait. Only what would block the loop goes to a
thread: reading a function this process has not seen ready (404 before the body
is read), starting the listener, re-reading a record the wake-up did not carry.
"""

from __future__ import annotations

import asyncio
import math
import time

import redis
from quart import Blueprint, Response, request

from wasmq.api.access import require_key_if_private
from wasmq.api.bounds import bounds
from wasmq.api.caller import caller
from wasmq.api.envelope import parse_envelope, request_body
from wasmq.api.negotiation import respond, wants_msgpack
from wasmq.api.replies import task_reply
from wasmq.api.request_log import TID_KEY
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
    """Absolute: the public URL's, else the one the request came to."""
    if svc.settings.public_url:
        return f"{svc.settings.public_url.rstrip('/')}/retrieve/{tid}"
    return f"{request.scheme}://{request.host}{request.root_path}/retrieve/{tid}"


@bp.post("/task/<cfid>")
async def submit(cfid: str) -> Response:
    svc, limits = services(), bounds()
    wait = parse_wait(request.args.get("wait"), svc.settings.sync_wait)
    known = svc.submissions.cached(cfid)
    on_loop = known is not None and known.record.status == "ready"
    if not on_loop:  # 404 (or a model's 503) before the body is read
        await limits.on_thread(svc.submissions.function)(cfid)
    data = parse_envelope(await request_body(), request.mimetype)
    tid = request.scope[TID_KEY] = new_tid()  # its log line's (api/request_log.py)
    bind_tid(tid)
    who = caller()
    call = svc.submissions.prepare(cfid, data, who, tid=tid) if on_loop else \
        await limits.on_thread(svc.submissions.prepare)(cfid, data, who, tid=tid)
    with limits.wait_place() as may_wait:
        waiter = None
        if wait > 0 and may_wait:
            if not svc.listener.subscribed:  # listening before the task can finish
                await limits.on_thread(svc.listener.start)()
            waiter = svc.listener.register(tid)
        try:
            outcome = await svc.batcher.run(call.lane, call)
            if isinstance(outcome, Exception):
                raise outcome
            record: TaskRecord | None = outcome
            if waiter is not None:
                svc.batcher.sent(call.lane)
                try:
                    record = await _finished(svc, tid, waiter, time.monotonic() + wait) \
                        or record
                finally:
                    svc.batcher.answered(call.lane)
        finally:
            if waiter is not None:
                svc.listener.unregister(tid, waiter)
    # wait=0 promises an immediate 5, whatever a fast worker did meanwhile.
    return _reply(svc, tid, record)


async def _finished(svc: Services, tid: str, waiter: Waiter,
                    deadline: float) -> TaskRecord | None:
    """The finished record, or None when the deadline came first. A wake-up without
    the record only means "look again" (it may be spurious)."""
    loop = asyncio.get_running_loop()
    woken = loop.create_future()

    def wake() -> None:  # on the listener's thread
        loop.call_soon_threadsafe(_settle, woken)

    waiter.on_wake = wake
    if waiter.event.is_set():
        wake()
    while (left := deadline - time.monotonic()) > 0:
        try:
            await asyncio.wait_for(woken, left)
        except TimeoutError:
            return None
        woken = loop.create_future()  # renewed before the re-check: no wake-up is lost
        waiter.event.clear()
        try:
            record = waiter.record or await bounds().on_thread(svc.tasks.get)(tid)
        except redis.RedisError:  # answer what was known: statusCode 5, resultUrl
            return None
        if record is None or record.status.finished:
            return record
    return None


def _settle(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


@bp.get("/retrieve/<tid>")
def retrieve(tid: str) -> Response:
    svc = services()
    return _reply(svc, tid, svc.tasks.get(tid))


def _reply(svc: Services, tid: str, record: TaskRecord | None) -> Response:
    if record is None:
        raise NotFound(f"task '{tid}' is unknown or its result has expired")
    require_key_if_private(svc.settings, record.private, "retrieving this task")
    as_msgpack = wants_msgpack()
    unserved = record.status == Status.QUEUED and not svc.live_queues.serves(record.queue)
    body, status = task_reply(record, result_url(svc, tid), as_bytes=as_msgpack,
                              unserved=unserved)
    return respond(body, status, as_msgpack=as_msgpack)
