-- nodes.lua: which worker nodes are alive.
--
-- Every node beats every HEARTBEAT_S (broker/protocol/recovery.py). A node silent for
-- `stale_s` is dead, but a node judges others only after beating without a gap
-- for `stale_s` itself: a Redis outage (restart, failover) silences every node at
-- once, and must not be taken for their deaths. This script only names the dead;
-- their calls are taken over with requeue.lua, and a dead node whose running set
-- is empty is forgotten ('gone').
--
-- KEYS[1] nodes   zset  wasmq:nodes: node -> its last beat (epoch seconds)
-- KEYS[2] since   hash  wasmq:nodes:since: node -> start of its gapless beats
-- KEYS[3] queues  hash  wasmq:nodes:queues: node -> the queues it consumes (comma-joined)
--
-- mode 'beat':  ARGV[1] 'beat', ARGV[2] node, ARGV[3] now, ARGV[4] stale_s,
--               ARGV[5] max_gap_s, ARGV[6] its queues, ARGV[7] at most this many dead
--               Returns {1 if the node was not listed else 0, dead nodes...}.
-- mode 'gone':  KEYS[4] running set of the dead node; ARGV[1] 'gone', ARGV[2] the dead
--               node, ARGV[3] now, ARGV[4] stale_s. Forgets it if it is still silent
--               and runs nothing. Returns 1 if forgotten.
-- mode 'leave': ARGV[1] 'leave', ARGV[2] node. A node stopping is no longer listed.

local nodes_key, since_key, queues_key = KEYS[1], KEYS[2], KEYS[3]
local mode, node = ARGV[1], ARGV[2]

if mode == 'beat' then
  local now, stale_s, max_gap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
  local last = tonumber(redis.call('ZSCORE', nodes_key, node) or '')
  local since = tonumber(redis.call('HGET', since_key, node) or '')
  if not last or not since or now - last > max_gap then
    since = now
    redis.call('HSET', since_key, node, now)
  end
  redis.call('ZADD', nodes_key, now, node)
  redis.call('HSET', queues_key, node, ARGV[6])
  local out = {(last and 0) or 1}
  if now - since >= stale_s then
    local dead = redis.call('ZRANGEBYSCORE', nodes_key, '-inf', now - stale_s, 'LIMIT', 0,
                            tonumber(ARGV[7]))
    for _, other in ipairs(dead) do out[#out + 1] = other end
  end
  return out
end

if mode == 'gone' then
  local now, stale_s = tonumber(ARGV[3]), tonumber(ARGV[4])
  local last = tonumber(redis.call('ZSCORE', nodes_key, node) or '')
  if last and now - last >= stale_s and redis.call('SCARD', KEYS[4]) == 0 then
    redis.call('ZREM', nodes_key, node)
    redis.call('HDEL', since_key, node)
    redis.call('HDEL', queues_key, node)
    return 1
  end
  return 0
end

if mode == 'leave' then
  redis.call('ZREM', nodes_key, node)
  redis.call('HDEL', since_key, node)
  redis.call('HDEL', queues_key, node)
  return 1
end

return redis.error_reply('nodes.lua: unknown mode ' .. tostring(mode))
