-- split.lua: send a batch's unfinished calls on as messages of their own.
--
-- A worker does this with a batch it will not run through: one redelivered
-- after its worker process died (so a call that kills its process is retried
-- alone, and only its own attempts run out), or the rest of a batch that has
-- already run as long as one task may (so no call waits behind others for more
-- than that). Calls that finished meanwhile are left alone. With `undo`, the
-- calls this node claimed but will not start go back to 'queued' with the
-- attempt the batch's claim counted taken back. A batch redelivered before any
-- node claimed it (a dead node had only prefetched it) still holds its caller's
-- place in the queue: `unclaimed` gives it up, as its claim would have, or its
-- own calls would wait behind it until release.lua found the place stale.
--
-- The calls go to the front of their caller's backlog, in order, not into the
-- queue: the fair share counts messages, and sixteen messages pushed straight
-- into the queue would stand in front of every other caller's next call
-- (tests/test_flood.py: another caller's fast call then waited 24 s behind a
-- flood of 3 s calls). The caller's share of the queue is then filled from the
-- backlog, as claim.lua does when one of its messages is taken.
--
-- KEYS[1] queue     list  the Celery queue
-- KEYS[2] pending   zset  wasmq:pending: tid -> when its message went into the queue
-- KEYS[3] queued    zset  wasmq:inqueue:<caller>: its messages in the queue -> since when
-- KEYS[4] backlog   list  wasmq:backlog:<caller>: "<tid> <tid>...\n<message>", held back
-- KEYS[5] backlogs  set   wasmq:backlogs: callers that have a backlog
-- Keys built here, per call: wasmq:task:<tid> (hash).
--
-- ARGV[1] now      epoch seconds
-- ARGV[2] node     the worker process splitting the batch
-- ARGV[3] undo     '1' to hand back calls this node claimed, '0' to leave their state
-- ARGV[4] share    how many messages a caller may have in the queue at once
-- ARGV[5] caller   the batch's caller (its member in `backlogs`)
-- ARGV[6] ttl      seconds the backlog is kept
-- ARGV[7] unclaimed the batch message's id (its first call's tid) if it left the
--                  queue without being claimed, else ''
-- ARGV[8 ..]       per call: tid, its packed job (kept with the record for a resend),
--                  its own Celery message
--
-- Returns how many calls it sent on.

local queue_key, pending_key, queued_key, backlog_key, backlogs_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, node, undo = ARGV[1], ARGV[2], ARGV[3]
local share, caller, ttl = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local unclaimed = ARGV[7]
local first_call = 8

if unclaimed ~= '' then redis.call('ZREM', queued_key, unclaimed) end

local entries = {}
for i = first_call, #ARGV, 3 do
  local tid, job, message = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local record_key = 'wasmq:task:' .. tid
  local state = redis.call('HMGET', record_key, 'status', 'node', 'attempts')
  if state[1] == 'queued' or state[1] == 'running' then
    if undo == '1' and state[1] == 'running' and state[2] == node then
      redis.call('HSET', record_key, 'status', 'queued', 'job', job,
                 'attempts', math.max(0, tonumber(state[3] or '1') - 1))
    end
    redis.call('HSET', record_key, 'held', '1')  -- resend.py leaves it alone
    redis.call('ZADD', pending_key, now, tid)  -- a purge finds it
    entries[#entries + 1] = tid .. '\n' .. message
  end
end
if #entries == 0 then return 0 end

for i = #entries, 1, -1 do redis.call('LPUSH', backlog_key, entries[i]) end
redis.call('EXPIRE', backlog_key, ttl)
redis.call('SADD', backlogs_key, caller)

-- The caller's share of the queue, filled from the front of its backlog.
while redis.call('ZCARD', queued_key) < share do
  local entry = redis.call('LPOP', backlog_key)
  if not entry then
    redis.call('SREM', backlogs_key, caller)
    break
  end
  local sep = string.find(entry, '\n', 1, true)
  local head = string.sub(entry, 1, sep - 1)
  redis.call('ZADD', queued_key, now, string.match(head, '^%S+'))
  for tid in string.gmatch(head, '%S+') do
    redis.call('ZADD', pending_key, now, tid)
    redis.call('HDEL', 'wasmq:task:' .. tid, 'held')  -- in the queue now
  end
  redis.call('LPUSH', queue_key, string.sub(entry, sep + 1))
end
redis.call('EXPIRE', queued_key, ttl)
return #entries
