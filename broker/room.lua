-- room.lua: whether Redis has room for `bytes` more of wasmq's own data while keeping a
-- reserve below its memory limit. Prepended to the scripts that store what calls keep
-- (broker/protocol: submit.lua, finish.lua; queue.py's ROOMY), run alone before an
-- upload is stored (broker/room.py).
--
-- Why a reserve: past `maxmemory` Redis refuses every command queued in a MULTI, and
-- kombu acknowledges and records deliveries in MULTIs; a Celery consumer refused one
-- stops ("Unrecoverable error"). A write admitted just under the limit may leave Redis
-- over it, so wasmq's writes stop a twentieth of the limit short (1 MB at least), and
-- the queue's own small records always fit.
--
-- KEYS: room  string  wasmq:room: bytes that may still be written without reading
--                     INFO again (half the room found last time), for 1 s at most
-- make_room(room_key, bytes): true and the bytes counted, or false.

local ROOM_FULL = "OOM command not allowed when used memory > 'maxmemory' " ..
  "less the reserve wasmq keeps for the queue's own records"

local function make_room(room_key, bytes)
  if redis.call('DECRBY', room_key, bytes) >= 0 then return true end
  local info = redis.call('INFO', 'memory')
  local limit = tonumber(string.match(info, '\nmaxmemory:(%d+)')) or 0
  local free = 2 ^ 40  -- no limit set
  if limit > 0 then
    local used = tonumber(string.match(info, '\nused_memory:(%d+)'))
    free = limit - math.max(math.floor(limit / 20), 1048576) - used
  end
  if free < bytes then return false end
  redis.call('SET', room_key, math.floor((free - bytes) / 2), 'PX', 1000)
  return true
end
