-- requeue.lua: hand the calls a node was running on to new Celery messages, in two
-- steps around the send, so no call is unrecorded while its message is made.
--
-- For a dead node's calls (taken by a live node), a split batch's and a stopping
-- node's. 'take' bumps each call's attempt (its older messages become stale) and moves
-- it to the taker's running set; the taker sends each with `retries` = attempt - 1;
-- 'handed' marks the sent calls queued and drops them from the taker's running set.
-- A taker that dies between the two leaves them where the next live node finds them.
--
-- 'take':   KEYS[1] running set of the node whose calls these were, KEYS[2] the
--           taker's, KEYS[3 ..] hash wasmq:{<tid>}:task per call
--           args=[mode: 'take', from node, taker, max_attempts, the tids...]
--           Returns per call taken: its new attempt, its packed job, and 'send' or
--           'exhausted' (it ran max_attempts times: the taker fails it). A call
--           finished, gone, or run by another node now is only dropped from `from`.
--           With from node '': calls still queued and claimed by no node, whose
--           message is nowhere (recovery.py looks once their queue has drained), their
--           attempt raised by two, so any copy of their message left is stale.
-- 'handed': KEYS[1] the taker's running set, then per call its record and
--           wasmq:queued:<its queue>
--           args=[mode: 'handed', taker, now, per call: tid and attempt...]
--           Returns how many calls are queued again.

local mode = ARGV[1]

if mode == 'take' then
  local from_key, to_key = KEYS[1], KEYS[2]
  local from_node, to_node, max_attempts = ARGV[2], ARGV[3], tonumber(ARGV[4])
  local out = {}
  for i = 3, #KEYS do
    local record_key, tid = KEYS[i], ARGV[i + 2]
    local status, node, attempts, job = unpack(redis.call(
      'HMGET', record_key, 'status', 'node', 'attempts', 'job'))
    local raise = nil
    if from_node == '' then
      if status == 'queued' and (node or '') == '' then raise = 2 end
    elseif redis.call('SREM', from_key, tid) == 1 and status and status ~= 'succeeded'
        and status ~= 'failed' and node == from_node then
      raise = 1
    end
    if raise and job then
      local attempt = tonumber(attempts or '0') + raise
      redis.call('HSET', record_key, 'status', 'running', 'attempts', attempt, 'node', to_node)
      redis.call('SADD', to_key, tid)
      out[#out + 1] = attempt
      out[#out + 1] = job
      out[#out + 1] = (attempt > max_attempts and 'exhausted') or 'send'
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
