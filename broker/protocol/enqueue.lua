-- enqueue.lua: create a caller's calls to one function, all or nothing per call, and
-- their one message: a single call (`wasmq.run`) or a batch (`wasmq.run_batch`).
--
-- Each call is counted against its caller's rate rules in order, up to the first
-- one it exceeds (a call refused there is counted all the same), checked against the function record it was
-- validated against (byte for byte), capped by the caller's tasks in flight
-- (entries that finished or expired unseen are dropped first, so a lost record
-- cannot hold a place forever), then its record and input are written and its
-- submission counted. The message goes into the queue while the caller is within
-- its share of it, else into the caller's backlog behind its earlier calls
-- (claim.lua releases it), so that one caller's backlog never stands in front of
-- another caller's call. Its id is its first call's tid; a batch's backlog entry
-- is headed by every tid it carries (claim.lua and release.lua read them). The
-- message names the calls the gateway expects to be admitted: when some of a
-- batch are refused and others admitted, the script answers 'rebuild' and writes
-- nothing but the counts, and the gateway sends the admitted ones again.
--
-- KEYS[1] pending   zset    wasmq:pending: tid -> when it was queued or held back (an
--                           operator's purge walks it; resend.py resends only those in
--                           the queue, never a held-back one)
-- KEYS[2] counts    hash    wasmq:metrics:counts ('submitted' is counted here)
-- KEYS[3] queue     list    the Celery queue (LPUSH here, workers BRPOP)
-- KEYS[4] function  string  wasmq:function:<cfid>: the function's stored record
-- KEYS[5] inflight  zset    wasmq:inflight:<caller>: tid -> createdAt, until it finishes
-- KEYS[6] queued    zset    wasmq:inqueue:<caller>: its messages in the queue -> since when
-- KEYS[7] backlog   list    wasmq:backlog:<caller>: "<tid> <tid>...\n<message>", held back
-- KEYS[8] backlogs  set     wasmq:backlogs: callers that have a backlog
-- KEYS[9..]         string  one rate-limit counter per rule (fixed window)
-- Keys built here, per call: wasmq:task:<tid> (hash), wasmq:input:<tid> (string).
--
-- ARGV[1] ttl           seconds the records and inputs are kept
-- ARGV[2] now           epoch seconds
-- ARGV[3] message       the Celery message (broker/protocol/messages.py)
-- ARGV[4] max_inflight  how many tasks the caller may have queued or running
-- ARGV[5] share         how many messages the caller may have in the queue at once
-- ARGV[6] caller        the caller's identity (its member in `backlogs`)
-- ARGV[7] ncalls        how many calls follow
-- ARGV[8] nrules        how many rate rules (KEYS[9..]); then per rule: window, allowance
-- then per call:        tid, expected function record, input by reference or '',
--                       nfields, the record's field/value items, then one cost per rule
--
-- Returns one reply per call, in order: 'queued' (queued or held in the backlog);
-- 'duplicate' when its record exists (redis-py resent the script after a dropped
-- connection: nothing is queued twice); 'limited:<rule>:<seconds left>';
-- 'busy:<tasks in flight>'; 'stale' (then the function's current record, or false,
-- is the last reply item); or {'rebuild', replies...} when nothing was written.

local pending_key, counts_key, queue_key, function_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local inflight_key, queued_key, backlog_key, backlogs_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local first_counter = 9

local ttl, now, message = ARGV[1], ARGV[2], ARGV[3]
local max_inflight, share, caller = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local ncalls, nrules = tonumber(ARGV[7]), tonumber(ARGV[8])

local windows, allowances, used = {}, {}, {}
for r = 1, nrules do
  windows[r], allowances[r] = ARGV[8 + 2 * r - 1], tonumber(ARGV[8 + 2 * r])
  used[r] = tonumber(redis.call('GET', KEYS[first_counter + r - 1]) or '0')
end
local added = {}
for r = 1, nrules do added[r] = 0 end

local current = redis.call('GET', function_key)
local held = redis.call('ZCARD', inflight_key)
local swept = false
local replies, admitted, calls = {}, {}, {}
local stale = false
local at = 9 + 2 * nrules
for c = 1, ncalls do
  local tid, expected, input = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local nfields = tonumber(ARGV[at + 3])
  local first_field = at + 4
  local first_cost = first_field + nfields
  at = first_cost + nrules
  local reply = nil
  if redis.call('EXISTS', 'wasmq:task:' .. tid) == 1 then reply = 'duplicate' end
  if not reply then
    for r = 1, nrules do  -- in order: the rules after the first one exceeded are not counted
      local cost = tonumber(ARGV[first_cost + r - 1])
      used[r] = used[r] + cost
      added[r] = added[r] + cost
      if used[r] > allowances[r] then reply = 'limited:' .. r .. ':'; break end
    end
  end
  if not reply and current ~= expected then reply = 'stale'; stale = true end
  if not reply and held >= max_inflight and not swept then
    swept = true
    for _, other in ipairs(redis.call('ZRANGE', inflight_key, 0, max_inflight - 1)) do
      local status = redis.call('HGET', 'wasmq:task:' .. other, 'status')
      if status ~= 'queued' and status ~= 'running' then
        redis.call('ZREM', inflight_key, other)
      end
    end
    held = redis.call('ZCARD', inflight_key)
  end
  if not reply and held >= max_inflight then reply = 'busy:' .. held end
  if not reply then
    reply = 'queued'
    held = held + 1
    admitted[#admitted + 1] = tid
    calls[#calls + 1] = {tid, input, first_field, first_cost - 1}
  end
  replies[c] = reply
end

-- Rate counters count every call, admitted or not.
for r = 1, nrules do
  if added[r] > 0 then
    local total = redis.call('INCRBY', KEYS[first_counter + r - 1], added[r])
    if total == added[r] then redis.call('EXPIRE', KEYS[first_counter + r - 1], windows[r]) end
  end
end
for c = 1, ncalls do
  if string.sub(replies[c], 1, 8) == 'limited:' then
    local r = tonumber(string.match(replies[c], 'limited:(%d+):'))
    replies[c] = replies[c] .. redis.call('TTL', KEYS[first_counter + r - 1])
  end
end
if stale then replies[#replies + 1] = current or false end

if #admitted < ncalls then
  -- The message names calls that will not run: write nothing but the counts.
  if #admitted > 0 then
    local out = {'rebuild'}
    for _, r in ipairs(replies) do out[#out + 1] = r end
    return out
  end
  return replies
end

-- The tasks.
local members = {}
for _, call in ipairs(calls) do
  local tid, input, first_field, last_field = call[1], call[2], call[3], call[4]
  local record_key = 'wasmq:task:' .. tid
  redis.call('HSET', record_key, unpack(ARGV, first_field, last_field))
  redis.call('EXPIRE', record_key, ttl)
  if input ~= '' then redis.call('SET', 'wasmq:input:' .. tid, input, 'EX', ttl) end
  members[#members + 1] = now
  members[#members + 1] = tid
end
redis.call('ZADD', inflight_key, unpack(members))
redis.call('EXPIRE', inflight_key, ttl)
redis.call('HINCRBY', counts_key, 'submitted', #admitted)

-- The message: into the queue within the caller's share, else into its backlog.
if redis.call('ZCARD', queued_key) < share and redis.call('LLEN', backlog_key) == 0 then
  redis.call('ZADD', queued_key, now, admitted[1])
  redis.call('EXPIRE', queued_key, ttl)
  redis.call('ZADD', pending_key, unpack(members))
  redis.call('LPUSH', queue_key, message)
  return replies
end
redis.call('ZADD', pending_key, unpack(members))  -- a purge finds held-back calls too
for _, tid in ipairs(admitted) do
  redis.call('HSET', 'wasmq:task:' .. tid, 'held', '1')  -- resend.py leaves it alone
end
redis.call('RPUSH', backlog_key, table.concat(admitted, ' ') .. '\n' .. message)
redis.call('EXPIRE', backlog_key, ttl)
redis.call('SADD', backlogs_key, caller)
return replies
