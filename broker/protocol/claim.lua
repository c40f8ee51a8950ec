-- claim.lua: a worker starts the calls of one Celery message (one, or a batch's).
--
-- A call runs unless its record finished (a redelivered copy must not run it again),
-- expired, or belongs to a later attempt than the message (attempt n travels as
-- Celery's `retries` n - 1, so the older messages of a call sent again are stale).
-- Running, it joins this node's running set, where live nodes find it if this node
-- dies (requeue.lua), and leaves its queue's queued set.
--
-- KEYS[1] running  set   wasmq:running:<node>
-- KEYS[2] queued   zset  wasmq:queued:<queue>
-- KEYS[3 ..]       hash  wasmq:{<tid>}:task, one per call, in message order
-- args=[node, now, retries: the message's, worker: "<host>:<pid>" of the pool process,
--       per call: tid and '1' to hand over its job (the message came without it)...]
--
-- Returns per call: state ('run', 'finished', 'stale', 'missing'), and the packed job
-- when asked for (else false).

local running_key, queued_key = KEYS[1], KEYS[2]
local node, now, retries, worker = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]

local out, claimed = {}, {}
for i = 3, #KEYS do
  local record_key, tid, want_job = KEYS[i], ARGV[2 * i - 1], ARGV[2 * i]
  local status, attempt, job = unpack(redis.call('HMGET', record_key, 'status', 'attempts',
                                                 'job'))
  local state = 'run'
  if not status then
    state = 'missing'
  elseif status == 'succeeded' or status == 'failed' then
    state = 'finished'
  elseif tonumber(attempt or '0') > retries + 1 then
    state = 'stale'
  end
  if state == 'run' then
    redis.call('HSET', record_key, 'status', 'running', 'node', node, 'worker', worker,
               'startedAt', now, 'attempts', retries + 1)
    claimed[#claimed + 1] = tid
  end
  out[#out + 1] = state
  out[#out + 1] = (state == 'run' and want_job == '1' and job) or false
end
if #claimed > 0 then
  redis.call('SADD', running_key, unpack(claimed))
  redis.call('ZREM', queued_key, unpack(claimed))
end
return out
