-- nodes.lua: which worker nodes are alive.
--
-- Every node beats every HEARTBEAT_S (recovery.py). A node silent for `stale_s` is
-- dead, but a node judges others only after beating without a gap for `stale_s`
-- itself: a Redis outage silences every node at once and must not be taken for their
-- deaths. This script only names the dead, and notes for each queue a dead node
-- consumed when it was found dead (its messages taken but not yet recorded by kombu are
-- lost with it: recovery.py sends those calls again once the queue drains);
-- requeue.lua takes the calls over.
--
-- KEYS[1] nodes   zset  wasmq:nodes: node -> its last beat (epoch seconds)
-- KEYS[2] since   hash  wasmq:nodes:since: node -> start of its gapless beats
-- KEYS[3] queues  hash  wasmq:nodes:queues: node -> the queues it consumes (comma-joined)
-- KEYS[4] lost    hash  wasmq:nodes:lost: queue -> when a node consuming it was found dead
-- KEYS[5] running set  of the dead node ('gone' only)
-- args=[mode, node, now, stale_s, max_gap_s, queues: the node's, max_dead: most named]
-- 'beat' (all args) returns {1 if the node was not listed else 0, dead nodes...};
-- 'gone' (mode to stale_s) forgets a node still silent and running nothing (1 if so);
-- 'leave' (mode, node) forgets a node stopping;
-- 'drained' (mode, node: a queue, now: the time read) forgets the queue's entry in
-- `lost` unless a later death replaced it.

local nodes_key, since_key, queues_key, lost_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
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
    for _, other in ipairs(dead) do
      out[#out + 1] = other
      for queue in string.gmatch(redis.call('HGET', queues_key, other) or '', '[^,]+') do
        redis.call('HSET', lost_key, queue, now)
      end
    end
  end
  return out
end

if mode == 'gone' then
  local last = tonumber(redis.call('ZSCORE', nodes_key, node) or '')
  if not last or tonumber(ARGV[3]) - last < tonumber(ARGV[4])
      or redis.call('SCARD', KEYS[5]) > 0 then
    return 0
  end
end
if mode == 'gone' or mode == 'leave' then
  redis.call('ZREM', nodes_key, node)
  redis.call('HDEL', since_key, node)
  redis.call('HDEL', queues_key, node)
  return 1
end

if mode == 'drained' then
  if redis.call('HGET', lost_key, node) == ARGV[3] then redis.call('HDEL', lost_key, node) end
  return 1
end

return redis.error_reply('nodes.lua: unknown mode ' .. tostring(mode))
