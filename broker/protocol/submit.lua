-- submit.lua: create one caller's calls to one function, each admitted or refused on
-- its own; the gateway then sends the admitted ones with Celery's `send_task`.
--
-- A call is checked, in order: against the caller's rate rules (every call counts,
-- refused or not, up to the first rule it exceeds); against the function record it was
-- validated against, byte for byte (a replaced or deleted function never runs from a
-- stale copy); against the caller's cap of calls in flight (entries past the TTL are
-- dropped first: a lost record never holds a place for ever); against the bytes the
-- caller keeps (its usage buckets, broker/usage.py).
--
-- KEYS[1] counts    hash    wasmq:metrics:counts ('submitted')
-- KEYS[2] function  string  wasmq:function:<cfid>
-- KEYS[3] inflight  zset    wasmq:inflight:<caller>: tid -> createdAt
-- KEYS[4] queued    zset    wasmq:queued:<queue>: tid -> createdAt
-- KEYS[5] room      string  wasmq:room (broker/room.lua, prepended)
-- KEYS[6 ..]                a string per rate rule (fixed window counters), the caller's
--                           usage buckets (the current one first), a hash
--                           wasmq:{<tid>}:task per call
-- args=[ttl, now, max_inflight, nrules, nusage, quota, expire_at (the current usage
--       bucket's), need (the bytes all calls keep: room is asked once), per rule: window
--       seconds and allowance, per call: the function record it was validated against,
--       nfields, field/value items (tid first), a cost per rule, the bytes it keeps...]
--
-- Returns per call 'queued:<calls in flight before it>' (also for a call that exists:
-- redis-py resent the script after a dropped connection), 'limited:<rule>:<seconds
-- left>', 'busy:<in flight>', 'quota:<bytes kept>', 'full' (no room: broker/room.lua)
-- or 'stale' (then the function's current record, or false, is the last item).

local counts_key, function_key, inflight_key, queued_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local room_key = KEYS[5]
local ttl, now, max_inflight, nrules = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local nusage, quota, expire_at = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local first_counter, first_usage = 6, 6 + nrules
local first_task = first_usage + nusage
local room = make_room(room_key, tonumber(ARGV[8]))

local kept = 0
for _, v in ipairs(redis.call('MGET', unpack(KEYS, first_usage, first_task - 1))) do
  kept = kept + tonumber(v or '0')
end

local windows, allowances, used, added = {}, {}, {}, {}
for r = 1, nrules do
  windows[r], allowances[r] = ARGV[7 + 2 * r], tonumber(ARGV[8 + 2 * r])
  used[r], added[r] = tonumber(redis.call('GET', KEYS[first_counter + r - 1]) or '0'), 0
end

local current = redis.call('GET', function_key)
local held = redis.call('ZCARD', inflight_key)
local swept, stale, replies = false, false, {}
local members = {}  -- score, tid of each call created
local at, c, stored = 9 + 2 * nrules, 0, 0
while at <= #ARGV do
  c = c + 1
  local record_key = KEYS[first_task + c - 1]
  local expected, nfields = ARGV[at], tonumber(ARGV[at + 1])
  local first_field, first_cost = at + 2, at + 2 + nfields
  local size = tonumber(ARGV[first_cost + nrules])
  at = first_cost + nrules + 1
  local reply = nil
  if redis.call('EXISTS', record_key) == 1 then reply = 'queued:0' end
  if not reply then
    for r = 1, nrules do  -- in order: rules after the first one exceeded are not counted
      local cost = tonumber(ARGV[first_cost + r - 1])
      used[r], added[r] = used[r] + cost, added[r] + cost
      if used[r] > allowances[r] then reply = 'limited:' .. r .. ':'; break end
    end
  end
  if not reply and current ~= expected then reply = 'stale'; stale = true end
  if not reply and held >= max_inflight and not swept then
    swept = true
    redis.call('ZREMRANGEBYSCORE', inflight_key, '-inf', tonumber(now) - tonumber(ttl))
    held = redis.call('ZCARD', inflight_key)
  end
  if not reply and held >= max_inflight then reply = 'busy:' .. held end
  if not reply and kept + size > quota then reply = 'quota:' .. kept end
  if not reply and not room then reply = 'full' end
  if not reply then
    redis.call('HSET', record_key, unpack(ARGV, first_field, first_cost - 1))
    redis.call('EXPIRE', record_key, ttl)
    members[#members + 1] = now
    members[#members + 1] = ARGV[first_field + 1]  -- the first field written is 'tid'
    reply, held, kept, stored = 'queued:' .. held, held + 1, kept + size, stored + size
  end
  replies[c] = reply
end

for r = 1, nrules do  -- rate counters count every call, admitted or not
  if added[r] > 0 then
    local total = redis.call('INCRBY', KEYS[first_counter + r - 1], added[r])
    if total == added[r] then redis.call('EXPIRE', KEYS[first_counter + r - 1], windows[r]) end
  end
end
for i = 1, c do
  local r = tonumber(string.match(replies[i], '^limited:(%d+):$') or '')
  if r then replies[i] = replies[i] .. redis.call('TTL', KEYS[first_counter + r - 1]) end
end
if #members > 0 then
  redis.call('ZADD', inflight_key, unpack(members))
  redis.call('ZADD', queued_key, unpack(members))
  redis.call('EXPIRE', inflight_key, ttl)
  redis.call('EXPIRE', queued_key, ttl)
  redis.call('HINCRBY', counts_key, 'submitted', #members / 2)
  redis.call('INCRBY', KEYS[first_usage], stored)
  redis.call('EXPIREAT', KEYS[first_usage], expire_at)
end
if stale then replies[#replies + 1] = current or false end
return replies
