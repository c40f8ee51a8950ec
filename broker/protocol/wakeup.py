"""The completion message every gateway process hears when a task finishes.

`finish.lua` publishes the tid, then, for a small record, a newline and the
finished record packed with msgpack (the hash's field/value list), which spares
the waiting gateway its HGETALL. A wake-up only ever means "look again": one
that cannot be read makes the waiter read the record from Redis.
"""

from __future__ import annotations

import msgpack

from wasmq.broker.protocol.record import TaskRecord

# Records up to this size (result and logs) travel with their wake-up.
SHIP_LIMIT = 16 * 1024


def parse_wakeups(data: bytes) -> list[tuple[str, bytes]]:
    """Every (tid, packed record) of a completion message: finish.lua's one, or
    finish.lua's for several calls ('*' and a msgpack list of [tid, packed or ''])."""
    if not data.startswith(b"*"):
        return [parse_wakeup(data)]
    try:
        pairs = msgpack.unpackb(data[1:], raw=True)
        return [(tid.decode(errors="replace"), packed or b"") for tid, packed in pairs]
    except (ValueError, TypeError, msgpack.UnpackException):
        return [("", b"")]  # unreadable: every waiter looks again


def parse_wakeup(data: bytes) -> tuple[str, bytes]:
    """A completion message: the tid, and the packed record if one was shipped."""
    tid, _, packed = data.partition(b"\n")
    return tid.decode(errors="replace"), packed


def unpack_shipped(packed: bytes) -> TaskRecord | None:
    """The shipped record, or None if there is none or it cannot be read."""
    if not packed:
        return None
    try:
        flat = msgpack.unpackb(packed, raw=True)
        record = TaskRecord.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
    except (ValueError, TypeError, KeyError, msgpack.UnpackException):
        return None
    return record if record.status.finished else None
