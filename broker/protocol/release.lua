-- release.lua: let callers' held-back messages into the queue where nothing else will.
--
-- claim.lua releases a caller's next message whenever one of its messages
-- leaves the queue. If the caller's messages in the queue were lost or
-- cancelled instead, nothing would ever be claimed, so worker nodes run this
-- every heartbeat: entries of the caller's `queued` set whose task is no longer
-- queued are dropped, then its backlog fills its share again.
--
-- KEYS[1] backlogs  set   wasmq:backlogs: callers that have a backlog
-- KEYS[2] pending   zset  wasmq:pending: tid -> when its message went into the queue
-- KEYS[3] queue     list  the Celery queue
--
-- ARGV[1] now    epoch seconds
-- ARGV[2] share  how many messages a caller may have in the queue at once
--
-- Keys built here (every caller's): wasmq:queued:<caller>, wasmq:backlog:<caller>,
-- wasmq:task:<tid>. Returns how many messages it released.

local backlogs_key, pending_key, queue_key = KEYS[1], KEYS[2], KEYS[3]
local now, share = ARGV[1], tonumber(ARGV[2])

local released = 0
for _, caller in ipairs(redis.call('SMEMBERS', backlogs_key)) do
  local queued_key, backlog_key = 'wasmq:queued:' .. caller, 'wasmq:backlog:' .. caller
  for _, tid in ipairs(redis.call('SMEMBERS', queued_key)) do
    if redis.call('HGET', 'wasmq:task:' .. tid, 'status') ~= 'queued' then
      redis.call('SREM', queued_key, tid)
    end
  end
  while redis.call('SCARD', queued_key) < share do
    local entry = redis.call('LPOP', backlog_key)
    if not entry then
      redis.call('SREM', backlogs_key, caller)
      break
    end
    local sep = string.find(entry, '\n', 1, true)
    local head = string.sub(entry, 1, sep - 1)  -- a batch's entry names all its tids
    redis.call('SADD', queued_key, string.match(head, '^%S+'))
    for tid in string.gmatch(head, '%S+') do
      redis.call('ZADD', pending_key, now, tid)
      redis.call('HDEL', 'wasmq:task:' .. tid, 'held')  -- in the queue now
    end
    redis.call('LPUSH', queue_key, string.sub(entry, sep + 1))
    released = released + 1
  end
end
return released
