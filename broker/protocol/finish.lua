-- finish.lua: store the outcomes of one caller's calls, count them, wake the gateways.
--
-- The first finish wins: a call run twice (its node taken for dead while only
-- paused) keeps the answer it was first given, is counted once and woken once.
-- Each call leaves its caller's tasks in flight and the running set of the node
-- that finishes it, and its job (with its input) is dropped. Cancelling a call
-- (broker/protocol/purge.py) is finishing it only while it is still queued.
--
-- KEYS[1] inflight  zset  wasmq:inflight:<caller>
-- KEYS[2] running   set   wasmq:running:<node>: this node's
-- KEYS[3] queued    zset  wasmq:queued:<queue>: a call failed before any claim leaves it
-- KEYS[4] counts    hash  wasmq:metrics:counts: 'succeeded', 'failed:<cause>'
-- KEYS[5] exec      hash  wasmq:metrics:exec: execution seconds histogram
-- KEYS[6] e2e       hash  wasmq:metrics:e2e: submission-to-result seconds histogram
-- KEYS[7] usage     string wasmq:usage:<caller>:<bucket>: bytes the caller keeps, now
-- KEYS[8 ..]        hash  wasmq:{<tid>}:task, one per call
--
-- ARGV[1] channel   the completion channel (wasmq:done)
-- ARGV[2] ttl       seconds a finished record is kept
-- ARGV[3] now       epoch seconds
-- ARGV[4] expire_at when the usage bucket expires (epoch seconds)
-- then per call:    tid, counter ('succeeded' or 'failed:<cause>'), exec seconds or '',
--                   '1' to ship the record with its wake-up, '1' to store only if the
--                   call is still queued, bytes its outcome keeps, nfields, field/value
--                   items
--
-- Histogram buckets (seconds) are broker/metrics.py BUCKETS (a test compares them).
-- Publishes one wake-up: the tid and, when shipped, "\n" and the record packed; or,
-- for several calls, "*" and a msgpack list of [tid, packed record or ''].
-- Returns 1 per call stored, 0 per call that had finished already.

local inflight_key, running_key, queued_key = KEYS[1], KEYS[2], KEYS[3]
local counts_key, exec_key, e2e_key, usage_key = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local channel, ttl, now, expire_at = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]

local buckets = {'0.001', '0.0025', '0.005', '0.01', '0.025', '0.05', '0.1', '0.25', '0.5',
                 '1', '2.5', '5', '10', '30', '60', '120', '300'}
local function observe(key, value)
  local bucket = '+Inf'
  for _, le in ipairs(buckets) do
    if value <= tonumber(le) then bucket = le; break end
  end
  redis.call('HINCRBY', key, bucket, 1)
  redis.call('HINCRBYFLOAT', key, 'sum', value)
  redis.call('HINCRBY', key, 'count', 1)
end

local stored, wakeups = {}, {}
local at, c, kept = 5, 0, 0
while at <= #ARGV do
  c = c + 1
  local record_key = KEYS[7 + c]
  local tid, counter, exec_s, ship = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local only_queued, size = ARGV[at + 4], tonumber(ARGV[at + 5])
  local nfields = tonumber(ARGV[at + 6])
  local first_field = at + 7
  at = first_field + nfields
  local status, created = unpack(redis.call('HMGET', record_key, 'status', 'createdAt'))
  if only_queued == '1' and status ~= 'queued' then
    stored[c] = 0
  elseif status == 'succeeded' or status == 'failed' or not status then
    redis.call('ZREM', inflight_key, tid)
    redis.call('SREM', running_key, tid)
    stored[c] = 0
  else
    redis.call('ZREM', inflight_key, tid)
    redis.call('SREM', running_key, tid)
    redis.call('ZREM', queued_key, tid)
    stored[c] = 1
    kept = kept + size
    redis.call('HINCRBY', counts_key, counter, 1)
    if exec_s ~= '' then observe(exec_key, tonumber(exec_s)) end
    if tonumber(created or '') then observe(e2e_key, math.max(0, now - tonumber(created))) end
    redis.call('HDEL', record_key, 'input', 'job')
    redis.call('HSET', record_key, unpack(ARGV, first_field, at - 1))
    redis.call('EXPIRE', record_key, ttl)
    local packed = ''
    if ship == '1' then packed = cmsgpack.pack(redis.call('HGETALL', record_key)) end
    wakeups[#wakeups + 1] = {tid, packed}
  end
end
if kept > 0 then
  redis.call('INCRBY', usage_key, kept)
  redis.call('EXPIREAT', usage_key, expire_at)
end
if #wakeups == 1 then
  local tid, packed = wakeups[1][1], wakeups[1][2]
  if packed ~= '' then tid = tid .. '\n' .. packed end
  redis.call('PUBLISH', channel, tid)
elseif #wakeups > 1 then
  redis.call('PUBLISH', channel, '*' .. cmsgpack.pack(wakeups))
end
return stored
