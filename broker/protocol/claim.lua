-- claim.lua: a worker takes the calls of a message it received from the queue (one,
-- or a batch's), in one script, each with its own answer.
--
-- A call is marked running unless it already finished (a message redelivered
-- after a node died must not run a finished call again) or its runs have
-- already ended their worker process too often (a poison pill), and its input
-- is handed over when it travelled by reference: one round trip for all. The
-- message has now left the queue, so the caller's next backlogged message takes
-- its place in the queue. The job kept for resending a lost message is dropped:
-- from here on the message is kombu's to redeliver.
--
-- KEYS[1] pending   zset  wasmq:pending: tid -> when its message went into the queue
-- KEYS[2] queue     list  the Celery queue
-- KEYS[3] queued    zset  wasmq:inqueue:<caller>: its messages in the queue -> since when
-- KEYS[4] backlog   list  wasmq:backlog:<caller>: "<tid> <tid>...\n<message>"
-- KEYS[5] backlogs  set   wasmq:backlogs: callers that have a backlog
-- Keys built here, per call: wasmq:task:<tid> (hash), wasmq:input:<tid> (string).
--
-- ARGV[1] node          the worker process claiming them
-- ARGV[2] now           epoch seconds
-- ARGV[3] max_attempts  runs a task may have before a lost worker fails it
-- ARGV[4] share         how many messages a caller may have in the queue at once
-- ARGV[5] caller        the caller's identity (its member in `backlogs`)
-- ARGV[6] id            the message's id (its first call's tid)
-- ARGV[7 ..]            per call: tid, '1' if its input travelled by reference else '0'
--
-- Returns four items per call: state ('running', 'succeeded', 'failed', 'missing',
-- 'exhausted'), the input or false, attempts, how the last worker process ended.

local pending_key, queue_key, queued_key, backlog_key, backlogs_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local node, now, max_attempts = ARGV[1], ARGV[2], tonumber(ARGV[3])
local share, caller, id = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local first_call = 7

local tids = {}
for i = first_call, #ARGV, 2 do tids[#tids + 1] = ARGV[i] end
redis.call('ZREM', pending_key, unpack(tids))

-- Release: the caller's next held-back message goes into the queue.
if redis.call('ZREM', queued_key, id) == 1 and redis.call('ZCARD', queued_key) < share then
  local entry = redis.call('LPOP', backlog_key)
  if entry then
    local sep = string.find(entry, '\n', 1, true)
    local head = string.sub(entry, 1, sep - 1)
    redis.call('ZADD', queued_key, now, string.match(head, '^%S+'))
    for next_tid in string.gmatch(head, '%S+') do
      redis.call('ZADD', pending_key, now, next_tid)
      redis.call('HDEL', 'wasmq:task:' .. next_tid, 'held')  -- in the queue now
    end
    redis.call('LPUSH', queue_key, string.sub(entry, sep + 1))
  else
    redis.call('SREM', backlogs_key, caller)
  end
end

local out = {}
for i = first_call, #ARGV, 2 do
  local tid, by_ref = ARGV[i], ARGV[i + 1]
  local record_key = 'wasmq:task:' .. tid
  local state = redis.call('HMGET', record_key, 'status', 'attempts', 'lost')
  local status, attempts = state[1], tonumber(state[2] or '0')
  if not status then
    out[#out + 1] = 'missing'; out[#out + 1] = false; out[#out + 1] = 0; out[#out + 1] = ''
  elseif status == 'succeeded' or status == 'failed' then
    out[#out + 1] = status; out[#out + 1] = false; out[#out + 1] = 0; out[#out + 1] = ''
  elseif attempts >= max_attempts then
    out[#out + 1] = 'exhausted'; out[#out + 1] = false; out[#out + 1] = attempts
    out[#out + 1] = state[3] or ''
  else
    redis.call('HSET', record_key, 'status', 'running', 'node', node, 'startedAt', now,
               'attempts', attempts + 1)
    redis.call('HDEL', record_key, 'job')
    out[#out + 1] = 'running'
    out[#out + 1] = by_ref == '1' and redis.call('GET', 'wasmq:input:' .. tid) or false
    out[#out + 1] = attempts + 1
    out[#out + 1] = ''
  end
end
return out
