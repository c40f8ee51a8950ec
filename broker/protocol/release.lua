-- release.lua: let callers' held-back messages into the queue where nothing else will.
--
-- claim.lua releases a caller's next message whenever one of its messages
-- leaves the queue. If the caller's messages in the queue were lost or
-- cancelled instead, nothing would ever be claimed, so worker nodes run this
-- every heartbeat: entries of the caller's `queued` set whose task is no longer
-- queued, or that went into the queue more than `stall` seconds ago, are
-- dropped, then its backlog fills its share again. A message still waiting in a
-- long queue after `stall` seconds only lets its caller have one more in the
-- queue: the share bends, no call is lost or run twice, and a stranded message
-- (lost inside kombu, on a node that died) cannot hold a backlog for longer.
--
-- KEYS[1] backlogs  set   wasmq:backlogs: callers that have a backlog
-- KEYS[2] pending   zset  wasmq:pending: tid -> when its message went into the queue
-- KEYS[3] queue     list  the Celery queue
--
-- ARGV[1] now    epoch seconds
-- ARGV[2] share  how many messages a caller may have in the queue at once
-- ARGV[3] stall  seconds after which a message in the queue no longer holds its place
--
-- Keys built here (every caller's): wasmq:inqueue:<caller> (zset), wasmq:backlog:<caller>,
-- wasmq:task:<tid>. Returns how many messages it released.

local backlogs_key, pending_key, queue_key = KEYS[1], KEYS[2], KEYS[3]
local now, share, stall = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local released = 0
for _, caller in ipairs(redis.call('SMEMBERS', backlogs_key)) do
  local queued_key, backlog_key = 'wasmq:inqueue:' .. caller, 'wasmq:backlog:' .. caller
  redis.call('ZREMRANGEBYSCORE', queued_key, '-inf', tonumber(now) - stall)
  for _, tid in ipairs(redis.call('ZRANGE', queued_key, 0, -1)) do
    if redis.call('HGET', 'wasmq:task:' .. tid, 'status') ~= 'queued' then
      redis.call('ZREM', queued_key, tid)
    end
  end
  while redis.call('ZCARD', queued_key) < share do
    local entry = redis.call('LPOP', backlog_key)
    if not entry then
      redis.call('SREM', backlogs_key, caller)
      break
    end
    local sep = string.find(entry, '\n', 1, true)
    local head = string.sub(entry, 1, sep - 1)  -- a batch's entry names all its tids
    redis.call('ZADD', queued_key, now, string.match(head, '^%S+'))
    for tid in string.gmatch(head, '%S+') do
      redis.call('ZADD', pending_key, now, tid)
      redis.call('HDEL', 'wasmq:task:' .. tid, 'held')  -- in the queue now
    end
    redis.call('LPUSH', queue_key, string.sub(entry, sep + 1))
    released = released + 1
  end
end
return released
