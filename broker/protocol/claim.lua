-- claim.lua: a worker starts the calls of one Celery message (one, or a batch's).
--
-- A call runs unless its record finished (a copy of its message redelivered
-- after it ran must not run it again), expired, or belongs to a later attempt
-- than the message (attempt n travels with Celery's `retries` n - 1: a call sent
-- again after its node was lost, or split off a batch, leaves its older messages
-- stale). The record counts attempts from 1. Running, it joins this node's
-- running set, which live nodes read if this node dies (requeue.lua), and leaves
-- its queue's queued set. Its job (input included) is handed over when the message
-- came without it (an input too large to travel inline, or a resent call).
--
-- KEYS[1] running  set   wasmq:running:<node>: tids this node runs
-- KEYS[2] queued   zset  wasmq:queued:<queue>: tids sent and not yet claimed
-- KEYS[3 ..]       hash  wasmq:{<tid>}:task, one per call, in message order
--
-- ARGV[1] node     this node's identity
-- ARGV[2] now      epoch seconds
-- ARGV[3] retries  the message's attempt (Celery's `retries` header)
-- ARGV[4] worker   the pool process running it, "<host>:<pid>" (the record shows it)
-- ARGV[5 ..]       per call, in message order: tid, '1' to hand over its job else '0'
--
-- Returns two items per call: state ('run', 'finished', 'stale', 'missing') and
-- the packed job when asked for (else false).

local running_key, queued_key = KEYS[1], KEYS[2]
local node, now, retries, worker = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]

local out = {}
for i = 3, #KEYS do
  local record_key = KEYS[i]
  local tid, want_job = ARGV[2 * i - 1], ARGV[2 * i]
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
    redis.call('SADD', running_key, tid)
    redis.call('ZREM', queued_key, tid)
  end
  out[#out + 1] = state
  out[#out + 1] = (state == 'run' and want_job == '1' and job) or false
end
return out
