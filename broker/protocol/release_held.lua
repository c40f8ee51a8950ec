-- release_held: a node acknowledges a message, only if it still holds it.
--
-- kombu's ack removes the message's unacknowledged entries whoever holds them
-- now. A node that was paused past its heartbeat had its messages put back
-- (requeue_dead.lua) and maybe delivered again, under the same delivery tag, to
-- another node; its late ack must leave that node's entries alone.
--
-- keys=[held, unacked, unacked_index]
--   held           hash: delivery tag -> queues, the messages this node holds
--   unacked        hash (kombu's): delivery tag -> JSON [payload, exchange, routing key]
--   unacked_index  zset (kombu's): delivery tag -> time it was delivered
-- args=[tag]
--   tag            the delivery tag acknowledged
-- returns 1 if this node held the message (its entries are gone now), else 0

local held_key = KEYS[1]
local unacked_key = KEYS[2]
local unacked_index_key = KEYS[3]
local tag = ARGV[1]

if redis.call('HDEL', held_key, tag) == 0 then
  return 0
end
redis.call('ZREM', unacked_index_key, tag)
redis.call('HDEL', unacked_key, tag)
return 1
