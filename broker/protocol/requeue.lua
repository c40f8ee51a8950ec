-- requeue.lua: hand calls a node was running on to a new Celery message, in two steps
-- around the send, so that no call is ever unrecorded while its message is made.
--
-- Used when a node is dead (live nodes take over its running set), when a batch
-- is split (its calls not yet run go on alone) and when a node stops. Step 'take'
-- bumps each call's attempt, so every older message of it becomes stale (claim.lua
-- skips it), and moves it into the taking node's running set; the caller then sends
-- each call through Celery with the new attempt as `retries`; step 'handed' marks
-- each sent call queued again and drops it from the taker's running set. A taker
-- that dies between the two steps leaves the calls in its own running set, where
-- the next live node finds them.
--
-- mode 'take':
--   KEYS[1] from   set   wasmq:running:<node whose calls these were>
--   KEYS[2] to     set   wasmq:running:<this node>
--   KEYS[3 ..]     hash  wasmq:{<tid>}:task, one per call
--   ARGV[1] 'take', ARGV[2] from node, ARGV[3] this node, ARGV[4] max_attempts,
--   ARGV[5 ..] the tids
--   Returns per call taken: tid, its new attempt (sent with Celery `retries` one
--   less), its packed job, its queue, and 'send' or 'exhausted' (it ran
--   max_attempts times already: the caller fails it with finish.lua).
--   A call already finished, gone, or run by another node now is dropped from `from`.
--
-- mode 'handed':
--   KEYS[1] to     set   wasmq:running:<this node>
--   KEYS[2 ..]     per call: hash wasmq:{<tid>}:task, zset wasmq:queued:<its queue>
--   ARGV[1] 'handed', ARGV[2] this node, ARGV[3] now, ARGV[4 ..] per call: tid, attempt
--   Returns how many calls are queued again.

local mode = ARGV[1]

if mode == 'take' then
  local from_key, to_key = KEYS[1], KEYS[2]
  local from_node, to_node, max_attempts = ARGV[2], ARGV[3], tonumber(ARGV[4])
  local out = {}
  for i = 3, #KEYS do
    local record_key, tid = KEYS[i], ARGV[i + 2]
    if redis.call('SREM', from_key, tid) == 1 then
      local status, node, attempts, job, queue = unpack(redis.call(
        'HMGET', record_key, 'status', 'node', 'attempts', 'job', 'queue'))
      if status and status ~= 'succeeded' and status ~= 'failed' and node == from_node
          and job then
        local attempt = tonumber(attempts or '0') + 1
        redis.call('HSET', record_key, 'attempts', attempt, 'node', to_node)
        redis.call('SADD', to_key, tid)
        out[#out + 1] = tid
        out[#out + 1] = attempt
        out[#out + 1] = job
        out[#out + 1] = queue or ''
        out[#out + 1] = (attempt > max_attempts and 'exhausted') or 'send'
      end
    end
  end
  return out
end

if mode == 'handed' then
  local to_key, to_node, now = KEYS[1], ARGV[2], ARGV[3]
  local queued = 0
  for c = 1, (#KEYS - 1) / 2 do
    local record_key, queued_key = KEYS[2 * c], KEYS[2 * c + 1]
    local tid, attempt = ARGV[2 + 2 * c], ARGV[3 + 2 * c]
    redis.call('SREM', to_key, tid)
    local status, node, attempts = unpack(redis.call('HMGET', record_key, 'status', 'node',
                                                     'attempts'))
    if status == 'running' and node == to_node and attempts == attempt then
      redis.call('HSET', record_key, 'status', 'queued', 'node', '')
      redis.call('ZADD', queued_key, now, tid)
      queued = queued + 1
    end
  end
  return queued
end

return redis.error_reply('requeue.lua: unknown mode ' .. tostring(mode))
