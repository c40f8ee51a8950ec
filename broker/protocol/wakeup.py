"""The completion message every gateway process hears when calls finish (finish.lua).

It lists each finished call's tid and, for a small record, the record itself, which
spares the waiting gateway its HGETALL. A wake-up only ever means "look again": one
that cannot be read makes every waiter read its record from Redis.
"""

from __future__ import annotations

import msgpack

from wasmq.broker.protocol.record import TaskRecord


def parse_wakeups(data: bytes) -> list[tuple[str, list | None]]:
    """(tid, the record's field/value list if shipped) of each call; ("", None) when
    the message cannot be read."""
    try:
        return [(tid.decode(errors="replace"), flat or None)
                for tid, flat in msgpack.unpackb(data, raw=True)]
    except (ValueError, TypeError, AttributeError, msgpack.UnpackException):
        return [("", None)]


def unpack_shipped(flat: list | None) -> TaskRecord | None:
    """The shipped record, or None if there is none, it cannot be read or it is not
    finished."""
    try:
        record = TaskRecord.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return record if record.status.finished else None
