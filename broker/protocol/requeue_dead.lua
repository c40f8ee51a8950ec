-- requeue_dead: a node's heartbeat, and the return of every message a dead node held.
--
-- Called by each live node about once a second (broker/nodes.py). A node whose
-- last beat is older than `stale_seconds` (Redis's own clock, so hosts' clocks
-- never matter) is dead: each message it still holds goes back to the front of
-- its queue in this one script, so no message is ever out of both the queue and
-- the unacknowledged entries, and none is pushed twice. So does each message it had
-- taken off a queue (BLMOVE into its taking list, broker/transport.py) and not yet
-- recorded as held: one the node died holding, or whose reply it left unread while
-- its pool was busy.
--
-- A node judges others only once it has itself beaten without a gap for
-- stale_seconds: after Redis was unreachable for everyone (a restart, a Sentinel
-- failover), the nodes' silence was Redis's, and each gets that long to beat again.
--
-- keys=[nodes, beating_since, unacked, unacked_index]
--   nodes          zset: node identity -> time of its last beat (seconds, Redis TIME)
--   beating_since  hash: node identity -> when its current run of beats without a gap began
--   unacked        hash (kombu's): delivery tag -> JSON [payload, exchange, routing key]
--   unacked_index  zset (kombu's): delivery tag -> time it was delivered
--   also, built here from held_prefix (one per node, so they cannot be named ahead):
--   <held_prefix><node>  hash: delivery tag -> JSON list of the queues kombu would
--                        restore the message into (written by broker/transport.py)
--   <taking_prefix><node>:<queue>  list: raw messages the node took off the queue
--                        and had not recorded as held yet (broker/transport.py)
-- args=[held_prefix, taking_prefix, queues, beating_node, stale_seconds, max_dead,
--       max_gap, forced_node...]
--   held_prefix    the prefix of the per-node held hashes ("wasmq:held:")
--   taking_prefix  the prefix of the per-node taking lists ("wasmq:taking:")
--   queues         JSON list of the queues nodes take messages from
--   beating_node   the node that beats now ('' for none: a node leaving)
--   stale_seconds  silence after which a node counts as dead
--   max_dead       how many dead nodes one call restores at most (bounds its time)
--   max_gap        seconds between two beats beyond which a node's run of beats restarts
--   forced_node    nodes restored whatever their last beat (a node leaving restores itself)
-- returns {beat_was_new, nodes_restored, messages_restored}
--   beat_was_new   1 if beating_node was not listed: its first beat, or it was taken
--                  for dead (paused past stale_seconds) and its messages went back

local nodes_key = KEYS[1]
local since_key = KEYS[2]
local unacked_key = KEYS[3]
local unacked_index_key = KEYS[4]
local held_prefix = ARGV[1]
local taking_prefix = ARGV[2]
local queues_taken_from = cjson.decode(ARGV[3])
local beating_node = ARGV[4]
local stale_seconds = tonumber(ARGV[5])
local max_dead = tonumber(ARGV[6])
local max_gap = tonumber(ARGV[7])
local first_forced = 8

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6

-- The beat, and whether this node has beaten steadily long enough to judge others.
local beat_was_new = 0
local may_judge = false
if beating_node ~= '' then
  local previous = tonumber(redis.call('ZSCORE', nodes_key, beating_node))
  beat_was_new = redis.call('ZADD', nodes_key, now, beating_node)
  local since = tonumber(redis.call('HGET', since_key, beating_node))
  if not previous or not since or now - previous > max_gap then
    since = now
    redis.call('HSET', since_key, beating_node, now)
  end
  may_judge = now - since >= stale_seconds
end

-- Who is dead: silent nodes (if this node may judge), and those named.
local dead = {}
if may_judge then
  dead = redis.call('ZRANGEBYSCORE', nodes_key, '-inf', now - stale_seconds,
                    'LIMIT', 0, max_dead)
end
for i = first_forced, #ARGV do
  table.insert(dead, ARGV[i])
end

-- Put back what each held, as kombu's restore does: flagged redelivered, pushed
-- on the right (the end BRPOP takes next), removed from both unacked entries.
local restored = 0
for _, node in ipairs(dead) do
  local held_key = held_prefix .. node
  local held = redis.call('HGETALL', held_key)
  for i = 1, #held, 2 do
    local tag, queues = held[i], held[i + 1]
    local entry = redis.call('HGET', unacked_key, tag)
    if entry then
      local message = cjson.decode(entry)
      local payload = message[1]
      if type(payload.headers) == 'table' then payload.headers.redelivered = true end
      if type(payload.properties) == 'table'
          and type(payload.properties.delivery_info) == 'table' then
        payload.properties.delivery_info.redelivered = true
      end
      local body = cjson.encode(payload)
      for _, queue in ipairs(cjson.decode(queues)) do
        redis.call('RPUSH', queue, body)
      end
      redis.call('ZREM', unacked_index_key, tag)
      redis.call('HDEL', unacked_key, tag)
      restored = restored + 1
    end
  end
  redis.call('DEL', held_key)
  -- Taken but never recorded: never delivered, so put back as it was, at the front.
  for _, queue in ipairs(queues_taken_from) do
    local taking_key = taking_prefix .. node .. ':' .. queue
    while redis.call('LMOVE', taking_key, queue, 'RIGHT', 'RIGHT') do
      restored = restored + 1
    end
  end
  redis.call('ZREM', nodes_key, node)
  redis.call('HDEL', since_key, node)
end

return {beat_was_new, #dead, restored}
