-- finish_batch.lua: store the results of several calls of a batch, count them, and
-- wake the gateways with one message.
--
-- What finish.lua does for one task, for each call given: the first finish
-- wins (a call already finished keeps its answer and is neither counted nor
-- woken again), its input and pending entry go, it leaves its caller's tasks
-- in flight, its record is written. The metrics of all of them are added in
-- one write per histogram bucket touched; the wake-up is one PUBLISH of '*'
-- followed by a msgpack list of [tid, packed record or ''] (broker/protocol/wakeup.py).
--
-- KEYS[1] pending   zset  wasmq:pending
-- KEYS[2] inflight  zset  wasmq:inflight:<caller>: the calls leave it
-- KEYS[3] counts    hash  wasmq:metrics:counts: 'succeeded', 'failed:<cause>'
-- KEYS[4] exec      hash  wasmq:metrics:exec: execution seconds histogram
-- KEYS[5] e2e       hash  wasmq:metrics:e2e: submission-to-result seconds histogram
-- Keys built here, per call: wasmq:task:<tid> (hash), wasmq:input:<tid> (string).
--
-- ARGV[1] channel   the completion channel (wasmq:done)
-- ARGV[2] ttl       seconds a finished record is kept
-- ARGV[3] now       epoch seconds: the finishing time
-- ARGV[4 ..]        per call: tid, counter, exec_s ('' when the module did not run),
--                   ship ('1' to send the record with its wake-up), nfields, then
--                   nfields field/value items
--
-- Buckets are those of broker/metrics.py BUCKETS, as in finish.lua.
-- Returns 1 per call stored, 0 per call that had already finished, in order.

local pending_key, inflight_key, counts_key, exec_key, e2e_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local channel, ttl, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local first_call = 4

local buckets = {'0.001', '0.0025', '0.005', '0.01', '0.025', '0.05', '0.1', '0.25', '0.5',
                 '1', '2.5', '5', '10', '30', '60', '120', '300'}
local adds = {[counts_key] = {}, [exec_key] = {}, [e2e_key] = {}}
local sums = {[exec_key] = 0, [e2e_key] = 0}

local function add(key, field, n)
  adds[key][field] = (adds[key][field] or 0) + n
end
local function observe(key, value)
  local bucket = '+Inf'
  for _, le in ipairs(buckets) do
    if value <= tonumber(le) then bucket = le; break end
  end
  add(key, bucket, 1)
  add(key, 'count', 1)
  sums[key] = sums[key] + value
end

local stored, wakeups, tids = {}, {}, {}
local at = first_call
while at <= #ARGV do
  local tid, counter, exec_s, ship = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local nfields = tonumber(ARGV[at + 4])
  local first_field, last_field = at + 5, at + 4 + nfields
  at = last_field + 1
  local record_key = 'wasmq:task:' .. tid
  tids[#tids + 1] = tid
  redis.call('DEL', 'wasmq:input:' .. tid)
  local state = redis.call('HMGET', record_key, 'status', 'createdAt')
  if state[1] == 'succeeded' or state[1] == 'failed' then
    stored[#stored + 1] = 0
  else
    stored[#stored + 1] = 1
    add(counts_key, counter, 1)
    if exec_s ~= '' then observe(exec_key, tonumber(exec_s)) end
    local created = tonumber(state[2] or '')
    if created then observe(e2e_key, math.max(0, now - created)) end
    redis.call('HSET', record_key, unpack(ARGV, first_field, last_field))
    redis.call('EXPIRE', record_key, ttl)
    local packed = ''
    if ship == '1' then packed = cmsgpack.pack(redis.call('HGETALL', record_key)) end
    wakeups[#wakeups + 1] = {tid, packed}
  end
end
redis.call('ZREM', pending_key, unpack(tids))
redis.call('ZREM', inflight_key, unpack(tids))

for key, fields in pairs(adds) do
  for field, n in pairs(fields) do redis.call('HINCRBY', key, field, n) end
end
for key, sum in pairs(sums) do
  if adds[key]['count'] then redis.call('HINCRBYFLOAT', key, 'sum', sum) end
end
if #wakeups > 0 then redis.call('PUBLISH', channel, '*' .. cmsgpack.pack(wakeups)) end
return stored
