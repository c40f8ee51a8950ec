"""The gateway's ASGI front: a waiting call holds no thread, and no caller takes them all.

Flask runs on a pool of threads (a2wsgi's WSGIMiddleware, WASMQ_GATEWAY_THREADS of
them). When a call waited for its task in one of those threads, 64 waiting calls
froze a gateway process, its health check included. In front of Flask, on the
event loop:

* A call that waits (`POST /task?wait=S`) is submitted on a thread, which hands its
  waiter over (`Handoff`) and returns; the front awaits the wake-up on the event
  loop (the completion listener's thread sets a future), then answers. Most calls
  the front serves itself, threadless, and sends them in batches when WASMQ_MAX_BATCH
  is over 1 (api/loop_task.py, api/batcher.py). A client
  that disconnects ends its wait. At most WASMQ_MAX_WAITING calls wait per process;
  past it a call answers at once with statusCode 5 and its resultUrl, as Scailable's
  contract allows.
* Each caller (a valid API key, else its address) has at most a sixteenth of the
  threads at once (they share one GIL: a caller with many busy threads would take
  most of every other request's time slices); its other requests wait their turn
  here, at most
  QUEUED_PER_CALLER of them, and past that get 429. Submissions are counted against
  the call rate rules in this process before they queue for a thread (the
  cluster-wide count is enqueue.lua's), so a flood is refused before it costs a
  thread.
* A caller's submission refused with 429 (tasks in flight, a rate rule) is answered the
  same way, without a thread, for the next REFUSED_HOLD_S.
* `/healthz` skips the per-caller queue.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgpack
import redis
from a2wsgi import WSGIMiddleware
from flask import Flask
from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from wasmq.api.batcher import Batcher
from wasmq.api.ratelimit import identity
from wasmq.api.replies import error_body, task_reply
from wasmq.api.services import Services
from wasmq.api.waiter import CompletionListener, Waiter
from wasmq.broker.protocol.record import TaskRecord
from wasmq.broker.settings import Settings

HANDOFF = "wasmq.handoff"  # the scope key a2wsgi passes to the view as environ["asgi.scope"]
# Requests of one caller waiting for a thread, or served threadless until answered.
QUEUED_PER_CALLER = 512
QUEUED_PER_PROCESS = 8192  # requests of all callers waiting for a thread
# A caller whose submission was just refused (429: its tasks in flight, a rate rule) gets
# the same answer, without a thread, for this long: a flood's burst is refused on the
# event loop instead of costing each call a thread and a round trip to learn it.
REFUSED_HOLD_S = 0.25
REFUSALS_KEPT = 100_000
SENDERS = 8  # threads sending batches to Redis; each lane has at most one batch on its way


@dataclass
class Handoff:
    """What the view, in its thread, leaves for the front to wait on."""

    can_wait: bool  # the front has room for one more waiting call
    tid: str = ""
    waiter: Waiter | None = None
    deadline: float = 0.0  # time.monotonic()
    result_url: str = ""
    as_msgpack: bool = False
    line: Any = None  # the request's log line (api/request_log.py), logged once answered

    def hold(self, tid: str, waiter: Waiter, deadline: float, result_url: str,
             as_msgpack: bool) -> None:
        self.tid, self.waiter, self.deadline = tid, waiter, deadline
        self.result_url, self.as_msgpack = result_url, as_msgpack


def handoff(environ: dict[str, Any]) -> Handoff | None:
    """The front's handoff for this request, when the front serves it."""
    scope = environ.get("asgi.scope")
    return scope.get(HANDOFF) if isinstance(scope, dict) else None


@dataclass
class _Slots:
    """One caller's share of the threads."""

    free: asyncio.Semaphore
    queued: int = 0  # waiting for a thread
    busy: int = 0  # on a thread
    sending: int = 0  # served threadless (api/loop_task.py), until answered


@dataclass
class _Wake:
    """The future the listener's thread sets; replaced before each re-check, so a
    wake-up that comes while the record is read is never lost."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future = field(init=False)

    def __post_init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        self.future = self.loop.create_future()

    def wake(self) -> None:
        self.loop.call_soon_threadsafe(self._set, self.future)

    @staticmethod
    def _set(future: asyncio.Future) -> None:
        if not future.done():
            future.set_result(None)


class Front:
    def __init__(self, app: Flask, settings: Settings) -> None:
        self.settings = settings
        self.services: Services = app.extensions["wasmq"]
        self.listener: CompletionListener = self.services.listener
        self.wsgi = WSGIMiddleware(_input_terminated(app), workers=settings.gateway_threads)
        self.per_caller = max(2, settings.gateway_threads // 16)
        self.slots: dict[str, _Slots] = {}
        self.waiting = 0
        self.parked = 0  # requests of every caller waiting for a thread or served threadless
        self.refused: dict[str, tuple[float, dict, bytes]] = {}  # caller -> until, reply
        self.limiter = FixedWindowRateLimiter(MemoryStorage())
        self.rules = parse_many(settings.rate_limit) if settings.rate_limit_enabled else []
        self.batcher = Batcher(settings.max_batch, self.services.submissions.send,
                               ThreadPoolExecutor(SENDERS, thread_name_prefix="wasmq-send"))
        from wasmq.api import loop_task  # it uses this module's parts

        self._serve_task = loop_task.serve

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, self.services.jobs.stop)
            return
        if scope["type"] != "http":
            await self.wsgi(scope, receive, send)
            return
        granian_receive = receive

        async def receive() -> dict:  # a2wsgi needs a coroutine; Granian's is an awaitable
            return await granian_receive()

        if scope["path"] == "/healthz":
            await self.wsgi(scope, receive, send)
            return
        who = identity(self.settings, _bearer(scope), (scope.get("client") or ("",))[0])
        is_task = scope["method"] == "POST" and scope["path"].startswith("/task/")
        if is_task and (held_reply := self._still_refused(who)) is not None:
            await send(held_reply[0])
            await send({"type": "http.response.body", "body": held_reply[1]})
            return
        if is_task and (retry := self._over_rate(who)) is not None:
            await _send_refusal(send, 429, f"rate limit of {self.rules[0]} exceeded for this "
                                           f"caller; retry after the time in Retry-After",
                                retry, cors=True)
            return
        slots = self.slots.get(who) or self.slots.setdefault(
            who, _Slots(asyncio.Semaphore(self.per_caller)))
        if self.parked >= QUEUED_PER_PROCESS:
            await _send_refusal(send, 429, f"more than {QUEUED_PER_PROCESS} requests are "
                                           f"waiting to be served; retry later", 1,
                                cors=is_task)
            return
        if slots.queued + slots.sending >= QUEUED_PER_CALLER:
            await _send_refusal(send, 429, f"more than {QUEUED_PER_CALLER} requests of this "
                                           f"caller are waiting to be served; retry later", 1,
                                cors=is_task)
            return
        if is_task:
            slots.sending += 1
            self.parked += 1
            try:
                if await self._serve_task(self, scope, receive, send):
                    return
            finally:
                slots.sending -= 1
                self.parked -= 1
                self._forget_if_idle(who, slots)
        slots.queued += 1
        self.parked += 1
        try:
            await slots.free.acquire()
        finally:
            slots.queued -= 1
            self.parked -= 1
        slots.busy += 1
        try:
            held = await self._serve(scope, receive, send, refused_for=who if is_task else None)
        finally:
            slots.busy -= 1
            slots.free.release()
            self._forget_if_idle(who, slots)
        if held is not None:
            await self._wait_and_answer(held, receive, send)

    def _forget_if_idle(self, who: str, slots: _Slots) -> None:
        if not (slots.queued or slots.busy or slots.sending) and self.slots.get(who) is slots:
            del self.slots[who]  # the table holds only callers being served

    def _still_refused(self, who: str) -> tuple[dict, bytes] | None:
        entry = self.refused.get(who)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self.refused[who]
            return None
        return entry[1], entry[2]

    def remember_refusal(self, who: str, start: dict, body: bytes) -> None:
        if len(self.refused) >= REFUSALS_KEPT:
            self.refused.clear()
        self.refused[who] = (time.monotonic() + REFUSED_HOLD_S, start, body)

    def _over_rate(self, who: str) -> int | None:
        """Seconds to wait when this process has seen too many of the caller's calls."""
        for item in self.rules:
            if not self.limiter.hit(item, who):
                reset = self.limiter.get_window_stats(item, who).reset_time
                return max(1, int(reset - time.time()) + 1)
        return None

    async def _serve(self, scope: dict, receive: Any, send: Any,
                     refused_for: str | None = None) -> tuple[Handoff, dict, list[bytes]] | None:
        """Run Flask; the reply it made, held back, when the view handed a wait over.
        A 429 to a submission (`refused_for` names its caller) is remembered."""
        scope[HANDOFF] = hoff = Handoff(can_wait=self.waiting < self.settings.max_waiting)
        start: dict | None = None
        body: list[bytes] = []
        refusal: dict | None = None
        refusal_body: list[bytes] = []

        async def capture(message: dict) -> None:
            nonlocal start, refusal
            if message["type"] == "http.response.start" and hoff.waiter is not None:
                start = message  # the immediate reply, sent only if the wait ends unfinished
            elif start is not None and message["type"] == "http.response.body":
                body.append(message.get("body", b""))
            else:
                if message["type"] == "http.response.start" and message["status"] == 429 \
                        and refused_for is not None:
                    refusal = message
                elif refusal is not None:
                    refusal_body.append(message.get("body", b""))
                    if not message.get("more_body"):
                        self.remember_refusal(refused_for, refusal,  # type: ignore[arg-type]
                                               b"".join(refusal_body))
                await send(message)

        await self.wsgi(scope, receive, capture)
        return (hoff, start, body) if start is not None else None

    async def wait_for(self, tid: str, waiter: Waiter, deadline: float,
                       receive: Any) -> TaskRecord | None:
        """The finished record, or None when the deadline came first (raises
        Disconnected when the client left); the waiter is unregistered after."""
        self.waiting += 1
        try:
            return await self._await(Handoff(True, tid, waiter, deadline), receive)
        finally:
            self.waiting -= 1
            self.listener.unregister(tid, waiter)

    async def _wait_and_answer(self, held: tuple[Handoff, dict, list[bytes]], receive: Any,
                               send: Any) -> None:
        hoff, start, body = held
        try:
            record = await self.wait_for(hoff.tid, hoff.waiter, hoff.deadline, receive)
        except Disconnected:
            return
        if record is None:  # the wait ended first: the reply made when it was submitted
            await send(start)
            await send({"type": "http.response.body", "body": b"".join(body)})
            _log(hoff, start["status"])
            return
        reply, status = task_reply(record, hoff.result_url, as_bytes=hoff.as_msgpack)
        content = msgpack.packb(reply, use_bin_type=True) if hoff.as_msgpack else \
            json.dumps(reply, separators=(",", ":")).encode()
        await send(_replaced(start, status, b"application/msgpack" if hoff.as_msgpack
                             else b"application/json", content))
        await send({"type": "http.response.body", "body": content})
        _log(hoff, status)

    async def _await(self, hoff: Handoff, receive: Any) -> TaskRecord | None:
        """The finished record, or None when the deadline came first."""
        waiter = hoff.waiter
        assert waiter is not None
        wake = _Wake(asyncio.get_running_loop())
        waiter.on_wake = wake.wake
        if waiter.event.is_set():
            wake.wake()
        gone = asyncio.ensure_future(_disconnect(receive))
        try:
            while (left := hoff.deadline - time.monotonic()) > 0:
                done, _ = await asyncio.wait({wake.future, gone}, timeout=left,
                                             return_when=asyncio.FIRST_COMPLETED)
                if gone in done:
                    raise Disconnected
                if wake.future not in done:
                    break
                wake.renew()
                waiter.event.clear()
                try:
                    record = waiter.record or await asyncio.to_thread(
                        self.services.tasks.get, hoff.tid)
                except redis.RedisError:  # answer what was known: statusCode 5, resultUrl
                    return None
                if record is None or record.status.finished:
                    return record
            return None
        finally:
            gone.cancel()


class Disconnected(Exception):
    """The client went away while its call waited."""


def _replaced(start: dict, status: int, content_type: bytes, content: bytes) -> dict:
    """The start of another reply to the request the view answered with `start`,
    keeping the view's other headers (CORS among them)."""
    headers = [(k, v) for k, v in start["headers"]
               if k.lower() not in (b"content-length", b"content-type")]
    headers += [(b"content-type", content_type), (b"content-length", str(len(content)).encode())]
    return {"type": "http.response.start", "status": status, "headers": headers}


def _log(hoff: Handoff, status: int) -> None:
    if hoff.line is not None:
        hoff.line.log(status)


async def _disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _lifespan(receive: Any, send: Any, on_shutdown: Callable[[], None]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await asyncio.get_running_loop().run_in_executor(None, on_shutdown)
            await send({"type": "lifespan.shutdown.complete"})
            return


def _bearer(scope: dict) -> str | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


async def _send_refusal(send: Any, status: int, message: str, retry_after: int,
                        cors: bool) -> None:
    content = json.dumps(error_body(message), separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(content)).encode()),
               (b"retry-after", str(retry_after).encode())]
    if cors:
        headers += [(b"access-control-allow-origin", b"*"),
                    (b"access-control-expose-headers", b"Retry-After")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def _input_terminated(app: Flask) -> Any:
    """a2wsgi's input stream ends where the request body does (chunked ones too), but
    it does not say so, and werkzeug then reads a body without Content-Length as
    empty: say so for it."""
    def wsgi(environ: dict, start_response: Any) -> Any:
        environ["wsgi.input_terminated"] = True
        return app(environ, start_response)

    wsgi.app = app  # type: ignore[attr-defined]
    return wsgi


def _open_files_as_allowed() -> None:
    """Every held connection is a descriptor: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def create_front(settings: Settings | None = None) -> Front:
    """Granian's factory: one front, one Flask app, per gateway process."""
    from wasmq.api.app import create_app

    settings = settings or Settings.from_env()
    _open_files_as_allowed()
    app = create_app(settings)
    app.extensions["wasmq"].jobs.start()  # resume model builds a dead gateway left
    return Front(app, settings)
