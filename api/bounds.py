"""What one caller may hold of a gateway process, and what all of them may: the ASGI
middleware in front of the app, and the way the app runs blocking work.

A gateway process serves every request on one event loop; what blocks (a Redis
round trip, a build, a form) runs on a pool of WASMQ_GATEWAY_THREADS threads, and a
call that waits for its task waits on the loop, holding no thread. Each bound, and
what it protects:

* Requests: at most QUEUED_PER_CALLER of one caller's requests are in the app at once
  (waiting for a thread, for their task, or served), and QUEUED_PER_PROCESS of all
  callers'; past them 429 at once. They protect the process's memory and the loop's
  time: each admitted request holds a request object, its body and a task.
* Threads: a caller runs at most a sixteenth of the threads (at least 2) at once; its
  other blocking work waits its turn here, holding no thread. This protects everyone
  else's share of the threads, and of the one GIL they share: a caller with many busy
  threads would take most of every other request's time slices.
* Waits: at most WASMQ_MAX_WAITING calls wait for their task per process; past it a
  call answers at once with statusCode 5 and its resultUrl, as Scailable's contract
  allows. This bounds the waiters the completion listener wakes and the connections
  held open.
* Call rate, counted in this process: a submission past WASMQ_RATE_LIMIT here is
  refused before it costs a round trip to Redis (the cluster-wide count, the one that
  holds across gateways, is Redis's: api/ratelimit.py). At most REFUSALS_KEPT callers'
  windows are kept.
* Refusals: a caller whose submission was just refused with 429 (its tasks in flight,
  a rate rule) gets the same reply for REFUSED_HOLD_S without a round trip, so a
  flood's burst is refused here, cheaply. At most REFUSALS_KEPT callers are held.

`/healthz` is outside the per-caller counts: a probe is answered whoever floods.

The counts and refusals happen here, before the app builds a request: a refusal costs
a flood a few microseconds, not a request's way through Quart. This is also the one
place that reads who the caller is (api/caller.py); the app finds it in the scope.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import copy_context
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from limits import parse_many
from quart import current_app, has_request_context, request

from wasmq.api.caller import SCOPE_KEY, read_caller
from wasmq.api.errors import reply_for
from wasmq.api.negotiation import encode
from wasmq.api.replies import error_body
from wasmq.broker.errors import RateLimited, TooManyInFlight
from wasmq.broker.settings import Settings

QUEUED_PER_CALLER = 512
QUEUED_PER_PROCESS = 8192
REFUSED_HOLD_S = 0.25
REFUSALS_KEPT = 100_000
UNCOUNTED = frozenset({"/healthz"})
ASGIApp = Callable[[dict, Any, Any], Awaitable[None]]

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(eq=False)
class _Slots:
    """One caller's share: its requests in the app and its threads."""

    threads: asyncio.Semaphore
    requests: int = 0


@dataclass(frozen=True)
class _Held:
    until: float  # time.monotonic()
    start: dict  # the reply's http.response.start
    body: bytes


class Bounds:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.threads = ThreadPoolExecutor(settings.gateway_threads,
                                          thread_name_prefix="wasmq-http")
        self.per_caller = max(2, settings.gateway_threads // 16)
        self.slots: dict[str, _Slots] = {}
        self.requests = 0
        self.waiting = 0
        self.refused: dict[str, _Held] = {}
        self.rules = parse_many(settings.rate_limit) if settings.rate_limit_enabled else []
        self.windows: dict[tuple[int, str], tuple[float, int]] = {}  # start, calls counted

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        who = scope[SCOPE_KEY] = read_caller(self.settings, scope)
        if scope["path"] in UNCOUNTED:
            await self.app(scope, receive, send)
            return
        submit = scope["method"] == "POST" and scope["path"].startswith("/task/")
        try:
            if submit:
                held = self._still_refused(who.identity)
                if held is not None:
                    await send(held.start)
                    await send({"type": "http.response.body", "body": held.body})
                    return
                self._count_rate(who.identity)
            slots = self._admit(who.identity)
        except RateLimited as refusal:
            await _refuse(scope, send, refusal)
            return
        try:
            await self.app(scope, receive, self._remembering(who.identity, send) if submit
                           else send)
        finally:
            self.requests -= 1
            slots.requests -= 1
            if slots.requests <= 0 and self.slots.get(who.identity) is slots:
                del self.slots[who.identity]  # the table holds only callers being served

    # Threads

    def on_thread(self, func: Callable[P, T]) -> Callable[P, Awaitable[T]]:
        """`func` made awaitable: run on the pool, within its caller's share of it."""
        @functools.wraps(func)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            scope = request.scope if has_request_context() else {}
            # A probe is answered whoever floods: outside its caller's share, whose
            # threads may all be waiting for build places while that caller uploads.
            slots = self.slots.get(scope[SCOPE_KEY].identity) \
                if SCOPE_KEY in scope and scope["path"] not in UNCOUNTED else None
            call = functools.partial(copy_context().run, functools.partial(func, *args, **kwargs))
            if slots is None:
                return await asyncio.get_running_loop().run_in_executor(self.threads, call)
            async with slots.threads:
                return await asyncio.get_running_loop().run_in_executor(self.threads, call)

        return run

    # Waits

    @contextmanager
    def wait_place(self):  # noqa: ANN201 - a context manager of bool
        """Yields whether one more call may wait for its task now."""
        if self.waiting >= self.settings.max_waiting:
            yield False
            return
        self.waiting += 1
        try:
            yield True
        finally:
            self.waiting -= 1

    # Counts and refusals

    def _admit(self, who: str) -> _Slots:
        if self.requests >= QUEUED_PER_PROCESS:
            raise TooManyInFlight(f"more than {QUEUED_PER_PROCESS} requests are waiting to "
                                  f"be served; retry later", retry_after=1)
        slots = self.slots.get(who)
        if slots is None:
            slots = self.slots[who] = _Slots(asyncio.Semaphore(self.per_caller))
        if slots.requests >= QUEUED_PER_CALLER:
            raise TooManyInFlight(f"more than {QUEUED_PER_CALLER} requests of this caller "
                                  f"are waiting to be served; retry later", retry_after=1)
        slots.requests += 1
        self.requests += 1
        return slots

    def _remembering(self, who: str, send: Any) -> Any:
        """`send`, keeping a 429 the app answers a submission with, to answer it again."""
        start: dict | None = None
        parts: list[bytes] = []

        async def sending(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] == 429:
                start = message
            elif start is not None and message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    if len(self.refused) >= REFUSALS_KEPT:
                        self.refused.clear()
                    self.refused[who] = _Held(time.monotonic() + REFUSED_HOLD_S, start,
                                              b"".join(parts))
            await send(message)

        return sending

    def _still_refused(self, who: str) -> _Held | None:
        held = self.refused.get(who)
        if held is None:
            return None
        if held.until < time.monotonic():
            del self.refused[who]
            return None
        return held

    def _count_rate(self, who: str) -> None:
        """A fixed window per rule and caller, from its first call, as the `limits`
        library counts; a dict, since its MemoryStorage starts a timer thread every
        few calls to expire them."""
        now = time.monotonic()
        if len(self.windows) >= REFUSALS_KEPT:
            self.windows.clear()
        for i, item in enumerate(self.rules):
            start, calls = self.windows.get((i, who), (now, 0))
            if now - start >= item.get_expiry():
                start, calls = now, 0
            if calls >= item.amount:
                raise RateLimited(f"rate limit of {item} exceeded for this caller; retry "
                                  f"after the time in the Retry-After header",
                                  retry_after=max(1, int(start + item.get_expiry() - now) + 1))
            self.windows[(i, who)] = (start, calls + 1)


def bounds() -> Bounds:
    return current_app.extensions["wasmq.bounds"]


async def _refuse(scope: dict, send: Any, refusal: RateLimited) -> None:
    status, extra, message = reply_for(refusal)
    content, kind = encode(error_body(message))
    headers = [(b"content-type", kind.encode()), (b"content-length", str(len(content)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
