-- take: a node records a message it took off the queue as held, in one step.
--
-- A node takes a message with BLMOVE, from the queue into its own taking list,
-- so that a taken message is never out of Redis's sight: kombu's BRPOP removed it
-- from the queue before the node recorded it, and a node killed in between (or
-- holding the reply unread while its pool was busy) lost it for good. This moves
-- it from the taking list into kombu's unacknowledged entries and this node's held
-- record together. If it is no longer in the taking list, live nodes took this
-- node for dead meanwhile (requeue_dead.lua) and put it back on the queue: it is
-- not recorded, and the node must not run it.
--
-- The writes come before the LREM: a script refused for memory stops at its first
-- write, leaving the message where it was (the node tries again).
--
-- keys=[taking, held, unacked, unacked_index]
--   taking         list: the raw messages this node took and has not recorded yet
--   held           hash: delivery tag -> queues, the messages this node holds
--   unacked        hash (kombu's): delivery tag -> JSON [payload, exchange, routing key]
--   unacked_index  zset (kombu's): delivery tag -> time it was delivered
-- args=[raw, tag, now, entry, queues]
--   raw            the message exactly as BLMOVE returned it
--   tag            its delivery tag
--   now            epoch seconds (kombu's unacked_index score)
--   entry          kombu's unacked entry for it
--   queues         JSON list of the queues kombu would restore it into
-- returns 1 if recorded, 0 if it had been put back already

local taking_key, held_key = KEYS[1], KEYS[2]
local unacked_key, unacked_index_key = KEYS[3], KEYS[4]
local raw, tag, now, entry, queues = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

if not redis.call('LPOS', taking_key, raw) then
  return 0
end
redis.call('ZADD', unacked_index_key, now, tag)
redis.call('HSET', unacked_key, tag, entry)
redis.call('HSET', held_key, tag, queues)
redis.call('LREM', taking_key, 1, raw)
return 1
