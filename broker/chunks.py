"""Values larger than Redis takes in one piece, stored in parts under their own key.

Redis refuses a single value over `proto-max-bulk-len` (512 MB by default): VGG-19
built into a 607 MB module could not be stored at all (issue 21). A value of at most
`chunk` bytes is stored as it always was; a larger one is stored in parts of `chunk`
bytes, as hash fields `<name>:0`, `<name>:1`, ... under the same key, with
`<name>:parts` (how many, written last, once all of them are there) marking it whole.
So the scripts that delete a binary with its artifacts (broker/release_binary.lua,
swap_record.lua) delete every part with the key, and a reader never sees half a value.

A value is read back into one buffer allocated once, a part at a time: the value and
one part in memory, never the parts and their join. Parts are written from views of
the value, not copies of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

import redis

CHUNK = 64 << 20  # bytes per part: well under proto-max-bulk-len, few round trips


def part(name: str, index: int) -> str:
    return f"{name}:{index}"


def parts_field(name: str) -> str:
    return f"{name}:parts"


def pieces(data: bytes | memoryview, chunk: int) -> list[memoryview]:
    """`data` cut into parts of `chunk` bytes, as views (no copies)."""
    view = memoryview(data)
    return [view[i:i + chunk] for i in range(0, len(view), chunk)] or [view]


def read_parts(client: redis.Redis, key: str, name: str, count: int) -> bytearray | None:
    """The value in `count` parts, or None when a part is gone (deleted meanwhile)."""
    first = client.hget(key, part(name, 0))
    if first is None:
        return None
    # Every part but the last is as long as the first: one buffer of `count` parts,
    # filled in place, then cut to the length read (shrunk in place, not copied).
    size = len(first)
    out = bytearray(size * count)
    out[:size] = first
    del first
    for index in range(1, count):
        piece = client.hget(key, part(name, index))
        if piece is None:
            return None
        out[size:size + len(piece)] = piece
        size += len(piece)
        del piece
    del out[size:]
    return out


def copy_parts(client: redis.Redis, key: str, name: str, count: int,
               out: BinaryIO) -> int | None:
    """The value in `count` parts written to `out` a part at a time, as read: one part
    in memory, never the value (a worker mapping a 600 MB artifact from a memory file
    held it whole, then copied it). Its size, or None when a part is gone."""
    size = 0
    for index in range(count):
        piece = client.hget(key, part(name, index))
        if piece is None:
            return None
        out.write(piece)
        size += len(piece)
        del piece
    return size


def write_parts(client: redis.Redis,
                put: Callable[[redis.client.Pipeline, str, memoryview], object], name: str,
                data: bytes | memoryview, chunk: int,
                accepted: Callable[[object], bool] = bool) -> bool:
    """`data` written in parts, each queued by `put(pipe, field, value)` on one
    pipeline, then the count that marks it whole, once every part's reply was
    `accepted` (False, and no count, when one was not: nothing whole is left).

    One round trip for the parts, not one each: Redis takes in the next part while
    the client is still sending (VGG-19's 607 MB module and its artifact, written a
    part per round trip, were most of the time between its build and `ready`). Not
    a transaction: Redis would hold every part queued, the value twice over, until
    EXEC. The pipeline holds views of `data`, not copies."""
    views = pieces(data, chunk)
    pipe = client.pipeline(transaction=False)
    for index, view in enumerate(views):
        put(pipe, part(name, index), view)
    replies = pipe.execute()
    del views
    if not all(accepted(reply) for reply in replies):
        return False
    pipe = client.pipeline(transaction=False)
    put(pipe, parts_field(name), memoryview(str(len(replies)).encode()))
    return accepted(pipe.execute()[0])


def as_fields(name: str, data: bytes | memoryview, chunk: int) -> dict[str, object]:
    """Hash fields holding `data`, for one HSET: `name` itself when it fits a part,
    else its parts and their count (each part its own bulk string, under Redis's limit)."""
    if len(data) <= chunk:
        return {name: data}
    views = pieces(data, chunk)
    fields: dict[str, object] = {part(name, i): view for i, view in enumerate(views)}
    fields[parts_field(name)] = len(views)
    return fields


def from_fields(fields: dict[bytes, bytes], name: str) -> bytes | None:
    """The value `as_fields` stored under `name`, from a hash's HGETALL (None when it
    is not there whole); each part leaves `fields` once copied, so the parts and the
    value are not all held at once."""
    whole = fields.get(name.encode())
    if whole is not None:
        return whole
    count = fields.get(parts_field(name).encode())
    names = [part(name, i).encode() for i in range(int(count or 0))]
    if count is None or any(n not in fields for n in names):
        return None
    out = bytearray(sum(len(fields[n]) for n in names))
    at = 0
    for n in names:
        piece = fields.pop(n)
        out[at:at + len(piece)] = piece
        at += len(piece)
        del piece
    return out
