-- enqueue.lua: create one task, all or nothing, if its caller may submit it.
--
-- Counts the call against its caller's rate rules, checks that the function is
-- still the one the call was validated against, caps the caller's tasks in
-- flight, then writes the record and its input, counts the submission, and
-- queues the message, or holds it in the caller's backlog while the caller
-- already has its share of the queue (claim.lua releases it), so that one
-- caller's backlog never stands in front of another caller's call.
--
-- KEYS[1]  record    hash    wasmq:task:<tid>
-- KEYS[2]  input     string  wasmq:input:<tid>: the input, when it travels by reference
-- KEYS[3]  pending   zset    wasmq:pending: tid -> when it was queued or held back (an
--                            operator's purge walks it; resend.py resends only tids
--                            in `queued`, never a held-back one)
-- KEYS[4]  counts    hash    wasmq:metrics:counts ('submitted' is counted here)
-- KEYS[5]  queue     list    the Celery queue (LPUSH here, workers BRPOP)
-- KEYS[6]  function  string  wasmq:function:<cfid>: the function's stored record
-- KEYS[7]  inflight  zset    wasmq:inflight:<caller>: tid -> createdAt, until it finishes
-- KEYS[8]  queued    set     wasmq:queued:<caller>: its tids whose message is in the queue
-- KEYS[9]  backlog   list    wasmq:backlog:<caller>: "<tid>\n<message>", held back
-- KEYS[10] backlogs  set     wasmq:backlogs: callers that have a backlog
-- KEYS[11..]         string  one rate-limit counter per rule (fixed window)
--
-- ARGV[1]  ttl           seconds the record and its input are kept
-- ARGV[2]  now           epoch seconds
-- ARGV[3]  tid
-- ARGV[4]  expected      the function record the call was validated against
-- ARGV[5]  input         the input when it travels by reference, else ''
-- ARGV[6]  message       the Celery message (broker/protocol/messages.py)
-- ARGV[7]  max_inflight  how many tasks the caller may have queued or running
-- ARGV[8]  share         how many messages the caller may have in the queue at once
-- ARGV[9]  caller        the caller's identity (its member in `backlogs`)
-- ARGV[10] nfields       how many record field/value items follow
-- ARGV[11 .. 10+nfields] the record's field/value items
-- then three per rule:   window seconds, allowance, what this call costs
--
-- Returns {'queued'} or {'backlogged'}; {'duplicate'} when the record exists
-- (redis-py resent the script after a dropped connection: nothing is queued
-- twice); {'limited', rule, seconds left}; {'stale', function record or false};
-- {'busy', tasks in flight}.

local record_key, input_key, pending_key, counts_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local queue_key, function_key, inflight_key = KEYS[5], KEYS[6], KEYS[7]
local queued_key, backlog_key, backlogs_key = KEYS[8], KEYS[9], KEYS[10]
local first_counter = 11

local ttl, now, tid, expected = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local input, message = ARGV[5], ARGV[6]
local max_inflight, share, caller = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local nfields = tonumber(ARGV[10])
local first_field, first_rule = 11, 11 + nfields

if redis.call('EXISTS', record_key) == 1 then return {'duplicate'} end

-- Rate rules: each counter counts the call's cost (1 for calls, its bytes for bytes).
for i = first_counter, #KEYS do
  local at = first_rule + 3 * (i - first_counter)
  local window, allowance, cost = ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local used = redis.call('INCRBY', KEYS[i], cost)
  if used == cost then redis.call('EXPIRE', KEYS[i], window) end
  if used > allowance then
    return {'limited', i - first_counter + 1, redis.call('TTL', KEYS[i])}
  end
end

-- The function: byte for byte the record the caller validated the call against.
local current = redis.call('GET', function_key)
if current ~= expected then return {'stale', current} end

-- Tasks in flight: entries whose record finished or expired unseen are dropped
-- first, so a lost record cannot hold a place forever.
if redis.call('ZCARD', inflight_key) >= max_inflight then
  for _, other in ipairs(redis.call('ZRANGE', inflight_key, 0, max_inflight - 1)) do
    local status = redis.call('HGET', 'wasmq:task:' .. other, 'status')
    if status ~= 'queued' and status ~= 'running' then
      redis.call('ZREM', inflight_key, other)
    end
  end
  local held = redis.call('ZCARD', inflight_key)
  if held >= max_inflight then return {'busy', held} end
end

-- The task.
redis.call('HSET', record_key, unpack(ARGV, first_field, first_rule - 1))
redis.call('EXPIRE', record_key, ttl)
if input ~= '' then redis.call('SET', input_key, input, 'EX', ttl) end
redis.call('ZADD', inflight_key, now, tid)
redis.call('EXPIRE', inflight_key, ttl)
redis.call('HINCRBY', counts_key, 'submitted', 1)

-- Its message: into the queue while the caller is within its share, else behind
-- the caller's earlier calls in its backlog.
if redis.call('SCARD', queued_key) < share and redis.call('LLEN', backlog_key) == 0 then
  redis.call('SADD', queued_key, tid)
  redis.call('EXPIRE', queued_key, ttl)
  redis.call('ZADD', pending_key, now, tid)
  redis.call('LPUSH', queue_key, message)
  return {'queued'}
end
redis.call('ZADD', pending_key, now, tid)
redis.call('RPUSH', backlog_key, tid .. '\n' .. message)
redis.call('EXPIRE', backlog_key, ttl)
redis.call('SADD', backlogs_key, caller)
return {'backlogged'}
