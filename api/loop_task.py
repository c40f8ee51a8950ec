"""`POST /task/<cfid>` served on the event loop: no thread, no Flask.

Under load, a call's trip through a2wsgi's thread hand-offs and Flask's dispatch
was about 40 % of the gateway's CPU (py-spy, 64 clients), more than validating
and sending the call. The front serves the common case itself, with the view's
own parts (api/tasks.py, api/envelope.py, api/submission.py, api/replies.py,
api/errors.py) in the view's order, so a call
answers the same either way (tests/test_loop_task.py sends each case both ways).

Anything else goes to the Flask view, before the body is read: a function this
process has not read yet, or last saw without a module (a model building or failed;
reading it is a Redis round trip, which a thread makes),
a body without Content-Length or over the input limit (the view refuses it
unread), a bad `wait`, a wait before the completion listener is subscribed
(starting it may wait).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import parse_qsl

import msgpack

from wasmq.api.app import BODY_SLACK
from wasmq.api.envelope import parse_envelope
from wasmq.api.errors import reply_for
from wasmq.api.front import Disconnected, Front
from wasmq.api.negotiation import MSGPACK, accepts_msgpack
from wasmq.api.ratelimit import caller_of
from wasmq.api.replies import error_body, task_reply
from wasmq.api.request_log import RequestLine
from wasmq.api.tasks import parse_wait
from wasmq.broker.errors import BadRequest
from wasmq.broker.logs import bind_tid
from wasmq.broker.protocol.record import Status, new_tid
from wasmq.broker.settings import MB

TASK_PATH = re.compile(r"/task/([^/]+)")
EXPOSE = (b"access-control-expose-headers", b"Retry-After")


async def serve(front: Front, scope: dict, receive: Any, send: Any) -> bool:
    """Answer the call and return True; or return False, having read nothing, for
    the Flask view to answer it."""
    match = TASK_PATH.fullmatch(scope["path"])
    svc = front.services
    headers = {k.lower(): v for k, v in scope.get("headers", ())}
    length = headers.get(b"content-length", b"")
    limit = front.settings.max_input_mb * MB + BODY_SLACK
    known = None if match is None else svc.submissions.cached(match[1])
    if match is None or not length.isdigit() or int(length) >= limit or known is None \
            or known.record.status != "ready":  # a model building: the view reads it again
        return False
    query = dict(reversed(parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                                    keep_blank_values=True)))
    try:
        wait = parse_wait(query.get("wait"), svc.settings.sync_wait)
    except BadRequest:
        return False
    if wait > 0 and not svc.listener.subscribed:
        return False
    cfid = match[1]
    started = time.perf_counter()
    body = await _read_body(receive)
    tid = new_tid()
    bind_tid(tid)
    line = RequestLine("POST", scope["path"], cfid, tid, started)
    origin = headers.get(b"origin")  # flask-cors's answer on /task/*, an Origin or not
    cors = [(b"access-control-allow-origin", origin), EXPOSE, (b"vary", b"Origin")] \
        if origin else [(b"access-control-allow-origin", b"*"), EXPOSE]
    host = headers.get(b"host", b"").decode("latin-1")
    root = scope.get("root_path", "")
    url = (svc.settings.public_url.rstrip("/") if svc.settings.public_url
           else f"{scope.get('scheme', 'http')}://{host}{root}") + f"/retrieve/{tid}"
    as_msgpack = accepts_msgpack(headers.get(b"accept", b"").decode("latin-1"))
    bearer = _bearer(headers.get(b"authorization", b"").decode("latin-1"))
    who = caller_of(svc.settings, bearer, (scope.get("client") or ("",))[0])
    waiter = None
    try:
        mimetype = headers.get(b"content-type", b"").decode("latin-1") \
            .split(";")[0].strip().lower()
        data = parse_envelope(body, mimetype)
        call = svc.submissions.prepare(cfid, data, who, tid=tid)
        if wait > 0 and front.waiting < front.settings.max_waiting:
            waiter = svc.listener.register(tid)
        outcome = await front.batcher.run(call.lane, call)
        if isinstance(outcome, Exception):
            raise outcome
    except Exception as exc:  # noqa: BLE001 - every error answers as the view's would
        if waiter is not None:
            svc.listener.unregister(tid, waiter)
        status, extra, message = reply_for(exc)
        content = json.dumps(error_body(message), separators=(",", ":")).encode()
        start = _start(status, b"application/json", content,
                       cors + [(k.lower().encode(), v.encode()) for k, v in extra.items()])
        if status == 429:
            front.remember_refusal(who.identity, start, content)
        await _answer(send, start, content, line, status)
        return True
    record = call.task.record
    if waiter is not None:
        front.batcher.sent(call.lane)
        try:
            record = await front.wait_for(tid, waiter, time.monotonic() + wait, receive) \
                or record
        except Disconnected:
            return True
        finally:
            front.batcher.answered(call.lane)
    unserved = record.status == Status.QUEUED and not svc.live_queues.serves(record.queue)
    reply, status = task_reply(record, url, as_bytes=as_msgpack, unserved=unserved)
    if as_msgpack:
        content, kind = msgpack.packb(reply, use_bin_type=True), MSGPACK.encode()
    else:
        content, kind = json.dumps(reply, separators=(",", ":")).encode(), b"application/json"
    await _answer(send, _start(status, kind, content, cors), content, line, status)
    return True


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _start(status: int, kind: bytes, content: bytes, extra: list) -> dict:
    headers = [(b"content-type", kind), (b"content-length", str(len(content)).encode()),
               *extra]
    return {"type": "http.response.start", "status": status, "headers": headers}


async def _answer(send: Any, start: dict, content: bytes, line: RequestLine,
                  status: int) -> None:
    await send(start)
    await send({"type": "http.response.body", "body": content})
    line.log(status)
