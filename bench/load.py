"""An HTTP/1.1 keep-alive load generator on asyncio streams.

The client shares the machine's two cores with the gateway and the workers, so
it has to be cheap: one event loop, raw request bytes built once, no HTTP
library on the measured path. Each client sends its next request as soon as
its previous answer arrived (a closed loop).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

# The rate limiter stays on (its Redis round trip is part of the hot path being
# measured) but high enough that one client address on loopback never hits it.
# The stack as shipped, with limits the bench's single client never reaches.
BENCH_ENV = {"WASMQ_RATE_LIMIT": "1000000/second", "WASMQ_MAX_INFLIGHT": "100000"}


@dataclass
class Answer:
    status: int
    body: bytes
    seconds: float


def request_bytes(url: str, path: str, body: bytes) -> bytes:
    host = urlsplit(url).netloc
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode() + body


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the gateway closed the connection")
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


class Connection:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, raw: bytes) -> Answer:
        for attempt in (0, 1):  # the server may have closed an idle keep-alive connection
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            started = time.perf_counter()
            try:
                self.writer.write(raw)
                status, body = await _read_answer(self.reader)  # type: ignore[arg-type]
                return Answer(status, body, time.perf_counter() - started)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def check(answer: Answer) -> None:
    if answer.status != 200 or json.loads(answer.body).get("statusCode") != 1:
        raise AssertionError(f"call failed: HTTP {answer.status} {answer.body[:300]!r}")


async def _closed_loop(url: str, raw: bytes, clients: int, seconds: float) -> list[float]:
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []

    async def client() -> None:
        conn = Connection(url)
        try:
            while time.perf_counter() < deadline:
                answer = await conn.send(raw)
                check(answer)
                latencies.append(answer.seconds)
        finally:
            conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


def closed_loop(url: str, raw: bytes, clients: int, seconds: float) -> tuple[list[float], float]:
    """Latencies of every call and the elapsed wall time."""
    started = time.perf_counter()
    latencies = asyncio.run(_closed_loop(url, raw, clients, seconds))
    return latencies, time.perf_counter() - started


class Client:
    """One keep-alive connection for sequential calls, kept across calls, so a
    first call is not charged for a TCP handshake its warm calls do not pay."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.conn = Connection(url)

    def calls(self, raw: bytes, n: int) -> list[float]:
        out = []
        for _ in range(n):
            answer = self.loop.run_until_complete(self.conn.send(raw))
            check(answer)
            out.append(answer.seconds)
        return out

    def close(self) -> None:
        self.conn.close()
        self.loop.close()
