"""Lingering close: a reply sent before the request's body was read still reaches the client.

The gateway refuses some requests without reading their body: over the input limit
(413), over the caller's bounds (429), an upload without its API key (401), a full
store (507). Closing the connection right after such a reply, with the client still
sending, makes the kernel reset it, and a client that writes its whole body before
it reads (Python's urllib and http.client, a raw socket) gets a broken pipe instead
of the reply. As nginx's `lingering_close` does, the gateway reads and discards what
the client still sends, at most `max_bytes` of it and for at most `seconds`, before
it lets the server close the connection: a client that never stops sending costs a
bounded amount.

Granian keeps a connection open after the reply only when the reply's body came in
one message: a body sent in parts (as Quart sends every reply: its content, then an
empty end) is a stream, and at its end Granian closes the connection with the
request's body unread. So the parts of a reply are joined here and sent as one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]],
                   Awaitable[None]]
LINGER_S = 5.0  # the longest a refused client is read from after its reply


class Linger:
    def __init__(self, app: ASGIApp, max_bytes: int, seconds: float = LINGER_S) -> None:
        self.app, self.max_bytes, self.seconds = app, max_bytes, seconds

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ended = False  # the body was read to its end, or the client left

        async def reading() -> dict:
            nonlocal ended
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                ended = True
            return message

        parts: list[bytes] = []

        async def sending(message: dict) -> None:
            if message["type"] != "http.response.body":
                await send(message)
            elif message.get("more_body", False):
                parts.append(message.get("body", b""))
            else:
                parts.append(message.get("body", b""))
                await send({"type": "http.response.body", "body": b"".join(parts)})
                parts.clear()

        await self.app(scope, reading, sending)
        if not ended:
            try:
                await asyncio.wait_for(self._discard(receive), self.seconds)
            except TimeoutError:
                pass

    async def _discard(self, receive: Any) -> None:
        read = 0
        while read <= self.max_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            read += len(message.get("body", b""))
            if not message.get("more_body", False):
                return
