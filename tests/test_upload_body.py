"""Upload bodies (api/upload_body.py), in process through ASGI against the session's
real Redis: read from the client only as fast as they are parsed."""

from __future__ import annotations

import asyncio
import json
import tracemalloc

import pytest
import urllib3

from tests.support import run_async
from tests.test_bounds import bounds_of, call, deploy, gateway
from wasmq.api.upload_body import BATCH, WINDOW

pytestmark = pytest.mark.fast
MESSAGE = 256 << 10


def test_an_upload_waiting_for_a_thread_holds_its_body_in_the_socket(redis_url: str) -> None:
    """Quart's receiver read a whole body as fast as it came, whether or not the view
    read it: an upload waiting for a thread held up to WASMQ_MAX_MODULE_MB in memory."""
    app = gateway(redis_url, max_inflight=10000)
    cfid = deploy(app)
    limits = bounds_of(app)
    junk = b"\0asm\x01\0\0\0" + bytes(20 << 20)  # does not validate: 400 once read
    body, content_type = urllib3.encode_multipart_formdata({"file": ("j.wasm", junk)})
    parts = [body[i:i + MESSAGE] for i in range(0, len(body), MESSAGE)]
    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        if not parts:
            await asyncio.sleep(3600)
        part = parts.pop(0)
        pulled += len(part)
        return {"type": "http.request", "body": part, "more_body": bool(parts)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "PUT", "scheme": "http", "path": f"/functions/{cfid}",
             "raw_path": f"/functions/{cfid}".encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", content_type.encode()), (b"host", b"testserver"),
                         (b"content-length", str(len(body)).encode())],
             "client": (app.test_address, 5000), "server": ("testserver", 80)}

    async def upload_while_threads_are_taken() -> int:
        call_waiting = asyncio.ensure_future(call(app, f"/task/{cfid}?wait=3"))
        await asyncio.sleep(0.3)  # the caller is being served: its share exists
        (share,) = [slots.threads for slots in limits.slots.values()]
        for _ in range(limits.per_caller):
            await share.acquire()  # the upload will wait for a thread of that share
        uploading = asyncio.ensure_future(app(scope, receive, send))
        await asyncio.sleep(1.0)
        held = pulled
        for _ in range(limits.per_caller):
            share.release()
        await uploading
        await call_waiting
        return held

    held = run_async(upload_while_threads_are_taken())
    assert held <= WINDOW + 2 * MESSAGE, held  # was the whole 20 MB
    assert pulled == len(body)  # then read to its end and answered
    reply = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert sent[0]["status"] == 400 and "module" in reply["message"], reply


def test_an_upload_sent_a_few_bytes_at_a_time_holds_about_its_bytes(redis_url: str) -> None:
    """Bytes taken from the window wait to be parsed in batches of BATCH: kept as a list
    of the messages they came in, 2-byte messages cost 40 bytes each (a 255 KB batch
    held 5 MB, outside every budget)."""
    app = gateway(redis_url)
    body, content_type = urllib3.encode_multipart_formdata({"file": ("j.wasm", bytes(200_000))})
    parts = [body[i:i + 2] for i in range(0, len(body), 2)]
    parts.reverse()
    sent: list[dict] = []
    peak_during = 0

    async def receive() -> dict:
        nonlocal peak_during
        if len(parts) == 1:
            peak_during = tracemalloc.get_traced_memory()[1]
        if not parts:
            await asyncio.sleep(3600)
        await asyncio.sleep(0)  # as a socket's messages come: one at a time
        part = parts.pop()
        return {"type": "http.request", "body": part, "more_body": bool(parts)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/functions",
             "raw_path": b"/functions", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", content_type.encode()), (b"host", b"testserver"),
                         (b"content-length", str(len(body)).encode())],
             "client": (app.test_address, 5000), "server": ("testserver", 80)}
    run_async(asyncio.sleep(0))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        run_async(app(scope, receive, send))
    finally:
        tracemalloc.stop()
    assert sent[0]["status"] == 400  # not a module, once read
    assert peak_during - before < 3 * BATCH, (peak_during - before) >> 10
