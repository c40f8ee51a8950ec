-- finish.lua: store a task's result, count it, and wake the gateways.
--
-- The first finish wins: a task run twice (its message redelivered after its
-- node was paused or presumed dead) keeps the answer it was first given, is
-- counted once, and its waiters are woken once.
--
-- KEYS[1] record     hash  wasmq:task:<tid>
-- KEYS[2] input      string wasmq:input:<tid>, deleted: the task no longer needs it
-- KEYS[3] pending    zset  wasmq:pending
-- KEYS[4] inflight   zset  wasmq:inflight:<caller>: the task leaves it
-- KEYS[5] counts     hash  wasmq:metrics:counts: 'succeeded', 'failed:<cause>'
-- KEYS[6] exec       hash  wasmq:metrics:exec: execution seconds histogram
-- KEYS[7] e2e        hash  wasmq:metrics:e2e: submission-to-result seconds histogram
--
-- ARGV[1] tid
-- ARGV[2] channel    the completion channel (wasmq:done)
-- ARGV[3] ttl        seconds the finished record is kept
-- ARGV[4] counter    the field of `counts` to bump: 'succeeded' or 'failed:<cause>'
-- ARGV[5] exec_s     execution seconds, or '' when the module did not run
-- ARGV[6] now        epoch seconds: the finishing time
-- ARGV[7] ship       '1' to send the finished record with its wake-up
-- ARGV[8 ..]         the record's field/value items (status, result, message, logs...)
--
-- Histogram buckets (seconds) are those of broker/metrics.py BUCKETS; a test
-- compares the two.
--
-- Returns 1 when stored, 0 when the task had already finished.

local record_key, input_key, pending_key, inflight_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local counts_key, exec_key, e2e_key = KEYS[5], KEYS[6], KEYS[7]
local tid, channel, ttl, counter = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local exec_s, now, ship = ARGV[5], tonumber(ARGV[6]), ARGV[7]
local first_field = 8

local buckets = {'0.001', '0.0025', '0.005', '0.01', '0.025', '0.05', '0.1', '0.25', '0.5',
                 '1', '2.5', '5', '10', '30', '60', '120', '300'}

redis.call('DEL', input_key)
redis.call('ZREM', pending_key, tid)
redis.call('ZREM', inflight_key, tid)

local previous = redis.call('HGET', record_key, 'status')
if previous == 'succeeded' or previous == 'failed' then return 0 end

-- Metrics: this is the task's first finish.
local function observe(key, value)
  local bucket = '+Inf'
  for _, le in ipairs(buckets) do
    if value <= tonumber(le) then bucket = le; break end
  end
  redis.call('HINCRBY', key, bucket, 1)
  redis.call('HINCRBYFLOAT', key, 'sum', value)
  redis.call('HINCRBY', key, 'count', 1)
end
redis.call('HINCRBY', counts_key, counter, 1)
if exec_s ~= '' then observe(exec_key, tonumber(exec_s)) end
local created = tonumber(redis.call('HGET', record_key, 'createdAt') or '')
if created then observe(e2e_key, math.max(0, now - created)) end

-- The record, then the wake-up (with the record when it is small).
redis.call('HSET', record_key, unpack(ARGV, first_field))
redis.call('EXPIRE', record_key, ttl)
if ship == '1' then
  redis.call('PUBLISH', channel, tid .. '\n' .. cmsgpack.pack(redis.call('HGETALL', record_key)))
else
  redis.call('PUBLISH', channel, tid)
end
return 1
