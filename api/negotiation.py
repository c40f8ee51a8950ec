"""Every reply is encoded here: JSON, or msgpack when the client prefers it.

JSON cannot carry raw bytes, so a client that sends or wants binary data uses
msgpack for the task envelope and the task reply; every other reply (and every
error) stays JSON, which is what Scailable's clients expect.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import msgpack
from quart import Response, request

MSGPACK = "application/msgpack"
MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})


def is_msgpack(mimetype: str) -> bool:
    return mimetype in MSGPACK_TYPES


def wants_msgpack() -> bool:
    """True when the client prefers msgpack over JSON (`*/*` still gets JSON)."""
    if "msgpack" not in request.headers.get("Accept", ""):
        return False  # most calls: no Accept header to parse
    best = request.accept_mimetypes.best_match(["application/json", *sorted(MSGPACK_TYPES)])
    return best is not None and is_msgpack(best)


def encode(body: Any, *, as_msgpack: bool = False) -> tuple[bytes, str]:
    """The reply's bytes and their content type."""
    if as_msgpack:
        return msgpack.packb(body, use_bin_type=True), MSGPACK
    return json.dumps(body, separators=(",", ":")).encode(), "application/json"


# A reply this small fits in the socket's buffers: sending it never waits for the
# client, so it needs no RESPONSE_TIMEOUT (whose wait_for costs a task per request).
UNTIMED_BYTES = 64 * 1024


def respond(body: Any, status: int = 200, headers: Mapping[str, str] | None = None, *,
            as_msgpack: bool = False) -> Response:
    content, kind = encode(body, as_msgpack=as_msgpack)
    response = Response(content, status=status, headers=dict(headers or {}), content_type=kind)
    if len(content) <= UNTIMED_BYTES:
        response.timeout = None
    return response
