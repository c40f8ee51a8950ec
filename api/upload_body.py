"""The body of an upload: read from its socket no faster than it is parsed, its file
written once, straight into its spool file.

Quart's receiver reads a request's whole body as fast as the client sends it,
whether or not the view reads it yet: an upload waiting for a thread held up to
WASMQ_MAX_MODULE_MB of body in memory, and its form parser then wrote the file to a
temporary file of its own, which the view copied again into the upload's spool
file (toolchain/spool.py): twenty 60 MB uploads wrote 2.4 GB to disk. Here:

* `BodyWindow`, ASGI middleware in front of the app, reads an upload's body from
  the server only while less than WINDOW bytes of it wait to be parsed, and while
  all uploads together hold less than BUDGET (one that holds nothing may always
  read one message, so each goes on, and a slow client holds nothing). The rest
  stays in the socket: the client is held back by TCP, not buffered here.
* `read_upload` parses the body as it comes (werkzeug's multipart decoder, in
  batches of BATCH bytes) and writes the file's bytes into the upload's own file.

Parsing stays on the event loop: on parser threads (tried), the threads' hold of
the GIL slowed the loop more than the parsing did (bench/big_uploads.py: /healthz
p99 130-400 ms against 100-140 ms, and 100 MB more memory).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quart import request
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import (
    Data,
    Epilogue,
    Field,
    File,
    MultipartDecoder,
    NeedData,
    State,
)

from wasmq.api.envelope import body_bounds
from wasmq.broker.errors import BadRequest, TooLarge
from wasmq.toolchain.spool import Spooled

WINDOW = 1 << 20  # bytes of one upload read from its socket but not yet parsed
BUDGET = 8 << 20  # the same, all uploads of a gateway process together
BATCH = 256 << 10  # bytes parsed at once
MAX_PARTS = 64  # parts of a form (the file, a name, limits: a dozen are used)
# Bytes the decoder may hold outside a part's data: werkzeug's decoder keeps the text
# before the first boundary, a part's headers and the text after the last boundary
# until they end, so a body made of them alone was held whole, past BUDGET.
HEAD_LIMIT = 64 << 10
OUTSIDE = {State.PREAMBLE: "preamble (the bytes before its first boundary)",
           State.PART: "part headers", State.EPILOGUE: "epilogue (the bytes after its "
           "closing boundary)"}
SCOPE_KEY = "wasmq.upload_body"
UPLOAD_PATH = "/functions"


@dataclass(eq=False)
class _Window:
    """One upload's bytes read from the server and not yet taken by its parser."""

    budget: "BodyWindow"
    unread: int = 0
    room: asyncio.Event = field(default_factory=asyncio.Event)

    def taken(self, nbytes: int) -> None:
        self.unread -= nbytes
        self.budget.unread -= nbytes
        self.budget.wake()


class BodyWindow:
    """The middleware: upload bodies (`POST /functions`, `PUT /functions/<cfid>`)
    read as they are parsed; every other request as before."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.unread = 0  # all uploads' bytes read and not yet parsed
        self.windows: set[_Window] = set()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not _is_upload(scope):
            await self.app(scope, receive, send)
            return
        window = scope[SCOPE_KEY] = _Window(self)
        self.windows.add(window)

        async def reading() -> dict:
            while not self._has_room(window):
                window.room.clear()
                await window.room.wait()
            message = await receive()
            nbytes = len(message.get("body", b""))
            window.unread += nbytes
            self.unread += nbytes
            return message

        try:
            await self.app(scope, reading, send)
        finally:
            self.windows.discard(window)
            self.unread -= window.unread
            self.wake()

    def _has_room(self, window: _Window) -> bool:
        return window.unread == 0 or (window.unread < WINDOW and self.unread < BUDGET)

    def wake(self) -> None:
        for window in self.windows:
            if self._has_room(window):
                window.room.set()


def _is_upload(scope: dict) -> bool:
    path, method = scope["path"], scope["method"]
    return (method == "POST" and path == UPLOAD_PATH) or \
        (method == "PUT" and path.startswith(UPLOAD_PATH + "/"))


@dataclass
class Upload:
    """An upload form: its text fields, and its `file` in a file of its own (None
    when the form has none); the caller closes `file`."""

    form: MultiDict
    file: Spooled | None
    filename: str


class _Parser:
    """A multipart body, fed in parts: its text fields kept (each
    at most `text_limit` + 1 characters, so a check of the limit still sees it passed),
    a text field past `memory_limit` bytes refused with 413, as Quart's parser does, the
    field `file` written to a spool file of at most `file_limit` bytes, other files
    dropped."""

    def __init__(self, boundary: bytes, file_limit: int, text_limit: int,
                 memory_limit: int) -> None:
        self.decoder = MultipartDecoder(boundary)
        self.parts = 0
        self.file_limit, self.text_limit = file_limit, text_limit
        self.fields: list[tuple[str, str]] = []
        self.file: Spooled | None = None
        self.filename = ""
        self._part: Field | None = None  # the text field being read
        self._spooling = False  # the file being read is the one kept
        self._text = bytearray()
        self._text_bytes = 0
        self.memory_limit = memory_limit

    def feed(self, data: bytes | bytearray | None) -> None:
        """`data`, the next bytes of the body (None at its end)."""
        self.decoder.receive_data(data)
        event = self.decoder.next_event()
        while not isinstance(event, (Epilogue, NeedData)):
            if isinstance(event, (Field, File)):
                self.parts += 1
                if self.parts > MAX_PARTS:
                    raise TooLarge(f"the upload's form has more than {MAX_PARTS} parts")
            if isinstance(event, Field):
                self._part, self._spooling = event, False
                self._text.clear()
                self._text_bytes = 0
            elif isinstance(event, File):
                self._part, self._spooling = None, event.name == "file" and self.file is None
                if self._spooling:
                    self.file, self.filename = Spooled.empty(), event.filename or ""
            elif isinstance(event, Data):
                self._data(event)
            event = self.decoder.next_event()
        where = OUTSIDE.get(self.decoder.state)
        if where and len(self.decoder.buffer) > HEAD_LIMIT:
            raise BadRequest(f"the upload's {where} is longer than {HEAD_LIMIT >> 10} KiB; "
                             "send a multipart form whose parts start at once")

    def _data(self, event: Data) -> None:
        if self._spooling and self.file is not None:
            self.file.append(event.data, self.file_limit, "module", "WASMQ_MAX_MODULE_MB")
            if not event.more_data:
                self.file.finish()
                self._spooling = False
        elif self._part is not None:
            self._text_bytes += len(event.data)
            if self._text_bytes > self.memory_limit:  # as Quart's parser refuses it
                raise RequestEntityTooLarge()
            if len(self._text) <= self.text_limit * 4:  # UTF-8: at most 4 bytes a character
                self._text += event.data
            if not event.more_data:
                text = self._text.decode("utf-8", "replace")[:self.text_limit + 1]
                self.fields.append((self._part.name, text))
                self._part = None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


async def read_upload(file_limit: int, text_limit: int) -> Upload:
    """This request's upload form, its body parsed as it arrives."""
    mimetype, options = parse_options_header(request.headers.get("Content-Type", ""))
    boundary = options.get("boundary", "")
    if mimetype != "multipart/form-data" or not boundary:
        return Upload(MultiDict(), None, "")
    if not boundary.isascii():  # RFC 2231 lets a parameter be any text
        raise BadRequest("the upload's multipart boundary is not ASCII text (RFC 2046)")
    window: _Window = request.scope[SCOPE_KEY]
    parser = _Parser(boundary.encode(), file_limit, text_limit,
                     request.max_form_memory_size or 500_000)

    async def parse(arrived: Callable[[int], None]) -> None:
        batch = bytearray()  # not a list of messages: tiny ones cost 40 bytes each
        async for data in request.body:
            window.taken(len(data))
            arrived(len(data))
            batch += data
            if len(batch) >= BATCH:
                parser.feed(batch)  # the decoder copies it
                batch.clear()
        if batch:
            parser.feed(batch)
        parser.feed(None)

    try:
        async with body_bounds() as arrived:
            await parse(arrived)
    except ValueError as exc:  # werkzeug's word for a malformed form
        parser.close()
        if parser.file is not None and not parser.file.done:  # the body ended inside it
            raise BadRequest("the upload's form ended before its file did: the body was "
                             "cut short, or its closing boundary is missing") from None
        raise BadRequest(f"the upload is not a well-formed multipart form ({exc})") from None
    except BaseException:
        parser.close()
        raise
    return Upload(MultiDict(parser.fields), parser.file, parser.filename)
