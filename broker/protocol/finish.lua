-- finish.lua: store the outcomes of one caller's calls, count them, wake the gateways.
--
-- The first finish wins: a call run twice (its node taken for dead while only paused)
-- keeps its first answer, counted and woken once. Cancelling (purge.py) is finishing
-- only while the call is still queued.
--
-- KEYS[1] inflight  zset  wasmq:inflight:<caller>
-- KEYS[2] running   set   wasmq:running:<node> (this node's)
-- KEYS[3] queued    zset  wasmq:queued:<queue>
-- KEYS[4] counts    hash  wasmq:metrics:counts: 'succeeded', 'failed:<cause>'
-- KEYS[5] exec      hash  wasmq:metrics:exec: execution seconds histogram
-- KEYS[6] e2e       hash  wasmq:metrics:e2e: submission-to-result seconds histogram
-- KEYS[7] usage     string wasmq:usage:<caller>:<bucket> (the current one)
-- KEYS[8] room      string wasmq:room (broker/room.lua, prepended)
-- KEYS[9 ..]        hash  wasmq:{<tid>}:task, one per call
-- args=[channel: wasmq:done, ttl, now, expire_at: the usage bucket's, need: the bytes
--       all outcomes keep, '1' to store them only if still queued, per call: tid,
--       counter, exec seconds or '', the bytes it keeps, nfields, field/value items...]
--
-- BUCKETS, the histograms' bounds, are broker/metrics.py's (prepended by queue.py).
-- Publishes one wake-up, a msgpack list of [tid, the record's field/value list or false]
-- (the record when SMALL: the waiting gateway needs no HGETALL; api/waiter.py).
-- Returns 1 per call stored, 0 per call that had finished already. Outcomes of over
-- SMALL in all need room (broker/room.lua): without it, nothing is stored and the reply
-- is an OOM error; smaller ones go into the reserve.

local inflight_key, running_key, queued_key = KEYS[1], KEYS[2], KEYS[3]
local counts_key, exec_key, e2e_key, usage_key = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local room_key = KEYS[8]
local channel, ttl, now, expire_at = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local need, only_queued, SMALL = tonumber(ARGV[5]), ARGV[6] == '1', 16384
if need > SMALL and not make_room(room_key, need) then return redis.error_reply(ROOM_FULL) end

local counters, histograms = {}, {[exec_key] = {}, [e2e_key] = {}}
local function observe(key, value)
  local bucket = '+Inf'
  for _, le in ipairs(BUCKETS) do
    if value <= tonumber(le) then bucket = le; break end
  end
  local h = histograms[key]
  h[bucket] = (h[bucket] or 0) + 1
  h.sum, h.count = (h.sum or 0) + value, (h.count or 0) + 1
end

local stored, wakeups, gone = {}, {}, {}
local at, c, kept = 7, 0, 0
while at <= #ARGV do
  c = c + 1
  local record_key = KEYS[8 + c]
  local tid, counter, exec_s = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local size, first_field = tonumber(ARGV[at + 3]), at + 5
  at = first_field + tonumber(ARGV[at + 4])
  local status, created = unpack(redis.call('HMGET', record_key, 'status', 'createdAt'))
  local skip = only_queued and status ~= 'queued'
  if not skip then gone[#gone + 1] = tid end
  stored[c] = 0
  if status and status ~= 'succeeded' and status ~= 'failed' and not skip then
    stored[c], kept = 1, kept + size
    counters[counter] = (counters[counter] or 0) + 1
    if exec_s ~= '' then observe(exec_key, tonumber(exec_s)) end
    if tonumber(created or '') then observe(e2e_key, math.max(0, now - tonumber(created))) end
    redis.call('HDEL', record_key, 'job')
    redis.call('HSET', record_key, unpack(ARGV, first_field, at - 1))
    redis.call('EXPIRE', record_key, ttl)
    wakeups[#wakeups + 1] = {tid, size <= SMALL and redis.call('HGETALL', record_key)}
  end
end
if #gone > 0 then
  redis.call('ZREM', inflight_key, unpack(gone))
  redis.call('SREM', running_key, unpack(gone))
  redis.call('ZREM', queued_key, unpack(gone))
end
for counter, n in pairs(counters) do redis.call('HINCRBY', counts_key, counter, n) end
for key, h in pairs(histograms) do  -- per bucket observed, 'sum' and 'count'
  for field, n in pairs(h) do
    redis.call((field == 'sum' and 'HINCRBYFLOAT') or 'HINCRBY', key, field, n)
  end
end
if kept > 0 then
  redis.call('INCRBY', usage_key, kept)
  redis.call('EXPIREAT', usage_key, expire_at)
end
if #wakeups > 0 then redis.call('PUBLISH', channel, cmsgpack.pack(wakeups)) end
return stored
