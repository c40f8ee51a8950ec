-- split.lua: send a batch's unfinished calls on as messages of their own.
--
-- A worker does this with a batch it will not run through: one redelivered
-- after its worker process died (so a call that kills its process is retried
-- alone, and only its own attempts run out), or the rest of a batch that has
-- already run as long as one task may (so no call waits behind others for more
-- than that). Calls that finished meanwhile are left alone. With `undo`, the
-- calls this node claimed but will not start go back to 'queued' with the
-- attempt the batch's claim counted taken back.
--
-- KEYS[1] queue    list  the Celery queue
-- KEYS[2] pending  zset  wasmq:pending: tid -> when its message went into the queue
-- Keys built here, per call: wasmq:task:<tid> (hash).
--
-- ARGV[1] now      epoch seconds
-- ARGV[2] node     the worker process splitting the batch
-- ARGV[3] undo     '1' to hand back calls this node claimed, '0' to leave their state
-- ARGV[4 ..]       per call: tid, its packed job (kept with the record for a resend),
--                  its own Celery message
--
-- Returns how many messages it queued.

local queue_key, pending_key = KEYS[1], KEYS[2]
local now, node, undo = ARGV[1], ARGV[2], ARGV[3]
local first_call = 4

local sent = 0
for i = first_call, #ARGV, 3 do
  local tid, job, message = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local record_key = 'wasmq:task:' .. tid
  local state = redis.call('HMGET', record_key, 'status', 'node', 'attempts')
  if state[1] == 'queued' or state[1] == 'running' then
    if undo == '1' and state[1] == 'running' and state[2] == node then
      redis.call('HSET', record_key, 'status', 'queued', 'job', job,
                 'attempts', math.max(0, tonumber(state[3] or '1') - 1))
      redis.call('ZADD', pending_key, now, tid)
    end
    redis.call('LPUSH', queue_key, message)
    sent = sent + 1
  end
end
return sent
