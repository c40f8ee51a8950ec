"""Room in Redis for wasmq's own data, a reserve short of its memory limit
(broker/room.lua says why): the scripts that store calls' inputs and results
check it themselves; an upload takes its room here before it is stored."""

from __future__ import annotations

from importlib.resources import files

import redis

from wasmq.broker import keys

ROOM_LUA = files(__package__).joinpath("room.lua").read_text(encoding="utf-8")
_TAKE = ROOM_LUA + """
if make_room(KEYS[1], tonumber(ARGV[1])) then return 1 end
return redis.error_reply(ROOM_FULL)
"""


class Room:
    def __init__(self, client: redis.Redis) -> None:
        self._take = client.register_script(_TAKE)

    def take(self, size: int) -> None:
        """Count `size` bytes about to be stored; redis.exceptions.OutOfMemoryError
        ("storage is full" to a caller) when they do not fit."""
        self._take(keys=[keys.ROOM], args=[size])
