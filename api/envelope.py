"""Parse the Scailable request envelope.

Scailable's clients send JSON labelled `application/x-www-form-urlencoded`, so
the body is parsed as JSON whatever the content type says. `input.data` is
handed to the module byte for byte, never parsed here. A body labelled
`application/msgpack` is the same envelope in msgpack, where `data` may be raw
bytes (no base64 needed).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgpack
from quart import request
from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout

from wasmq.api.negotiation import is_msgpack
from wasmq.broker.errors import BadRequest

EXAMPLE = ('{"input": {"content-type": "json", "location": "embedded", "data": "..."}, '
           '"output": {"content-type": "json", "location": "echo"}, "control": 1, '
           '"properties": {"language": "WASM"}}')
# Said when the envelope's input is missing or is the module's input itself.
SEND_ENVELOPE = ("; the module's input goes, as a string, in 'input.data' of the Scailable "
                 f"envelope: {EXAMPLE}")


async def request_body() -> bytes:
    """The body of a call, within its bounds (`body_bounds`)."""
    chunks = []
    async with body_bounds() as arrived:
        async for chunk in request.body:
            arrived(len(chunk))
            chunks.append(chunk)
    return b"".join(chunks)


# A body that keeps arriving at least this fast is never cut off, however large.
MIN_BODY_RATE = 64 * 1024  # bytes a second


@asynccontextmanager
async def body_bounds() -> AsyncIterator[Callable[[int], None]]:
    """A body read within its bounds, for calls and uploads alike: the reader reports
    each chunk to the function yielded, which refuses it (413) once the body grows past
    the route's `max_content_length` (a body with a Content-Length over it was refused
    unread, api/app.py; a chunked one has no length to refuse up front), and (408) when
    it stops or slows down: it may pause for up to WASMQ_BODY_TIMEOUT, and take that
    long plus a second for every MIN_BODY_RATE bytes it brings in all. A client that
    stalls its body or trickles it holds its connection and its caller's place about
    that long; a large upload over a slow link goes through."""
    timeout, limit = request.body_timeout, request.max_content_length
    loop = asyncio.get_running_loop()
    started, received = loop.time(), 0
    try:
        async with asyncio.timeout(timeout) as deadline:
            def arrived(nbytes: int) -> None:
                nonlocal received
                received += nbytes
                if limit is not None and received > limit:
                    raise RequestEntityTooLarge()
                due = min(started + timeout + received / MIN_BODY_RATE, loop.time() + timeout)
                if due - deadline.when() >= timeout / 8:  # re-armed now and then, not per chunk
                    deadline.reschedule(due)

            yield arrived
    except TimeoutError:
        raise RequestTimeout(
            f"the request body arrived too slowly: {received} bytes in "
            f"{loop.time() - started:.0f} s; a body may pause for up to WASMQ_BODY_TIMEOUT "
            f"({timeout:g} s), and take that long plus a second for every "
            f"{MIN_BODY_RATE // 1024} KiB it brings") from None


def parse_envelope(body: bytes, mimetype: str = "") -> bytes:
    """Return the input bytes for the module, or raise BadRequest saying what is wrong."""
    if is_msgpack(mimetype):
        return input_data(_unpack(body))
    if not body.strip():
        raise BadRequest(f"empty request body; send the Scailable envelope: {EXAMPLE}")
    try:
        envelope = json.loads(body)
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON ({exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}); send the Scailable envelope: {EXAMPLE}"
                         ) from None
    except RecursionError:
        raise BadRequest("request body nests JSON arrays or objects too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise BadRequest(f"request body is not usable JSON: {exc}") from None
    return input_data(envelope)


def _unpack(body: bytes) -> Any:
    if not body:
        raise BadRequest("empty request body; send the Scailable envelope as msgpack")
    try:
        return msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise BadRequest(f"request body is not valid msgpack ({exc}); send the Scailable "
                         "envelope as one msgpack map") from None


# Optional envelope members and the JSON type each must have when present;
# their values are otherwise ignored (wasmq always embeds and echoes).
_TYPES: dict[tuple[str, ...], type] = {
    ("input", "content-type"): str,
    ("input", "location"): str,
    ("output", "content-type"): str,
    ("output", "location"): str,
    ("control",): int,
    ("properties", "language"): str,
}
_TYPE_NAMES = {str: "a string", int: "a whole number"}


def _check_types(envelope: dict[str, Any]) -> None:
    for path, kind in _TYPES.items():
        parent: Any = envelope
        for step in path[:-1]:
            parent = parent.get(step) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or path[-1] not in parent:
            continue
        value = parent[path[-1]]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BadRequest(f"'{'.'.join(path)}' must be {_TYPE_NAMES[kind]}, "
                             f"got {_kind(value)}")


def input_data(envelope: Any) -> bytes:
    if not isinstance(envelope, dict):
        raise BadRequest(f"the envelope must be a JSON object, got {_kind(envelope)}")
    inp = envelope.get("input")
    if inp is None:
        raise BadRequest(f"the envelope has no 'input' object{SEND_ENVELOPE}")
    if not isinstance(inp, dict):
        # Most often the module's own input sent bare: {"input": [[1,2,3]]}.
        raise BadRequest(f"'input' must be an object, got {_kind(inp)}{SEND_ENVELOPE}")
    if "data" not in inp:
        raise BadRequest(f"the envelope has no 'input.data'{SEND_ENVELOPE}")
    for name in ("output", "properties"):
        if name in envelope and not isinstance(envelope[name], dict):
            raise BadRequest(f"'{name}' must be an object, got {_kind(envelope[name])}")
    _check_types(envelope)
    location = inp.get("location", "embedded")
    if location != "embedded":
        raise BadRequest(f"input.location {location!r} is not supported; use 'embedded'")
    data = inp["data"]
    if isinstance(data, bytes):  # msgpack envelopes carry raw bytes
        return data
    if not isinstance(data, str):
        raise BadRequest(f"'input.data' must be a string, got {_kind(data)}")
    try:
        return data.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("'input.data' contains unpaired surrogate escapes; "
                         "it must be valid Unicode text") from None


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value),
                                                                       type(value).__name__)
