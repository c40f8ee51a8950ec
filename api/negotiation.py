"""JSON or msgpack, chosen by the request's headers.

JSON cannot carry raw bytes, so a client that sends or wants binary data uses
msgpack for the task envelope and the task reply; every other reply (and every
error) stays JSON, which is what Scailable's clients expect.
"""

from __future__ import annotations

from typing import Any

import msgpack
from flask import Response, jsonify, request
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

MSGPACK = "application/msgpack"
MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})


def is_msgpack(mimetype: str) -> bool:
    return mimetype in MSGPACK_TYPES


def wants_msgpack() -> bool:
    """True when the client prefers msgpack over JSON (`*/*` still gets JSON)."""
    return _prefers_msgpack(request.accept_mimetypes)


def accepts_msgpack(accept: str) -> bool:
    """`wants_msgpack` for an Accept header's value."""
    return _prefers_msgpack(parse_accept_header(accept, MIMEAccept))


def _prefers_msgpack(accept: MIMEAccept) -> bool:
    best = accept.best_match(["application/json", *sorted(MSGPACK_TYPES)])
    return best is not None and is_msgpack(best)


def respond(body: dict[str, Any], status: int, *, as_msgpack: bool = False) -> Response:
    if not as_msgpack:
        response = jsonify(body)
        response.status_code = status
        return response
    return Response(msgpack.packb(body, use_bin_type=True), status=status, mimetype=MSGPACK)
