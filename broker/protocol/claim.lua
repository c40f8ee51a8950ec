-- claim.lua: a worker takes a task it received from the queue.
--
-- Marks the task running unless it already finished (a message redelivered
-- after a node died must not run a finished task again) or its runs have
-- already ended their worker process too often (a poison pill), and hands over
-- the input when it travelled by reference: one round trip for both. The
-- task's message has now left the queue, so the caller's next backlogged
-- message takes its place in the queue. The job kept for resending a lost
-- message is dropped: from here on the message is kombu's to redeliver.
--
-- KEYS[1] record    hash    wasmq:task:<tid>
-- KEYS[2] input     string  wasmq:input:<tid>
-- KEYS[3] pending   zset    wasmq:pending: tid -> when its message went into the queue
-- KEYS[4] queue     list    the Celery queue
-- KEYS[5] queued    set     wasmq:queued:<caller>: its tids whose message is in the queue
-- KEYS[6] backlog   list    wasmq:backlog:<caller>: "<tid>\n<message>" (a batch's:
--                           "<tid> <tid>...\n<message>", its id the first tid)
-- KEYS[7] backlogs  set     wasmq:backlogs: callers that have a backlog
--
-- ARGV[1] node          the worker process claiming it
-- ARGV[2] now           epoch seconds
-- ARGV[3] tid
-- ARGV[4] max_attempts  runs a task may have before a lost worker fails it
-- ARGV[5] share         how many messages a caller may have in the queue at once
-- ARGV[6] caller        the caller's identity (its member in `backlogs`)
--
-- Returns {'running', input or false}; {'succeeded'|'failed'|'missing', false};
-- {'exhausted', false, attempts, how the last worker process ended}.

local record_key, input_key, pending_key, queue_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local queued_key, backlog_key, backlogs_key = KEYS[5], KEYS[6], KEYS[7]
local node, now, tid = ARGV[1], ARGV[2], ARGV[3]
local max_attempts, share, caller = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]

redis.call('ZREM', pending_key, tid)

-- Release: the caller's next held-back message goes into the queue.
if redis.call('SREM', queued_key, tid) == 1 and redis.call('SCARD', queued_key) < share then
  local entry = redis.call('LPOP', backlog_key)
  if entry then
    local sep = string.find(entry, '\n', 1, true)
    local head = string.sub(entry, 1, sep - 1)  -- a batch's entry names all its tids
    redis.call('SADD', queued_key, string.match(head, '^%S+'))
    for next_tid in string.gmatch(head, '%S+') do
      redis.call('ZADD', pending_key, now, next_tid)
    end
    redis.call('LPUSH', queue_key, string.sub(entry, sep + 1))
  else
    redis.call('SREM', backlogs_key, caller)
  end
end

local status = redis.call('HGET', record_key, 'status')
if not status then return {'missing', false} end
if status == 'succeeded' or status == 'failed' then return {status, false} end

local attempts = tonumber(redis.call('HGET', record_key, 'attempts') or '0')
if attempts >= max_attempts then
  return {'exhausted', false, attempts, redis.call('HGET', record_key, 'lost') or ''}
end
redis.call('HSET', record_key, 'status', 'running', 'node', node, 'startedAt', now,
           'attempts', attempts + 1)
redis.call('HDEL', record_key, 'job')
return {'running', redis.call('GET', input_key)}
