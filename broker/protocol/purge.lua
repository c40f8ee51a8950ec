-- purge.lua: cancel queued tasks and drop their queue messages, one chunk per call.
--
-- An operator drains a flood with it (`wasmq purge`, `wasmq cancel`). A task is
-- cancelled only while its record says "queued": a task a worker already
-- claimed is left alone. Cancelling finishes the record as the finish script
-- would (status failed, message "cancelled", counted once under its cause,
-- woken on the completion channel with the record shipped), and drops what
-- would bring it back: its input, its pending entry and the job kept for
-- resending a lost message (workers/node.py `resend_lost` only resends tasks
-- whose record is still queued). A message a worker had already reserved
-- stays with that worker, whose claim then finds the task finished and skips it.
--
-- Called in chunks so that Redis never blocks for a whole flood: `mode`
-- "records" walks the pending set, "messages" walks the queue list, both from
-- `offset`, `count` entries at a time. Entries pushed meanwhile only shift
-- what is left to a later index (rescanned, never skipped), and the entries a
-- call removes all lie before the offset it returns.
--
-- keys=[queue, pending, counters]
--   queue     list  kombu's Redis queue: JSON messages, LPUSHed, taken from the tail
--   pending   zset  tid -> when its message was last sent, until a worker claims it
--   counters  hash  cluster metrics; `counter` is bumped once per cancelled task
-- args=[mode, offset, count, cfid, tid, cutoff, now, ttl, channel, message, cause,
--       counter, task_prefix, input_prefix]
--   mode          "records" or "messages"
--   offset, count the chunk of the pending set or the queue list to look at
--   cfid          only tasks of this function ('' for every function)
--   tid           only this task ('' for every task)
--   cutoff        only tasks created at or before this time (epoch seconds), so a
--                 purge does not chase tasks submitted while it runs
--   now           the cancelled records' finishedAt
--   ttl           seconds a finished record is kept
--   channel       the completion channel gateways listen on
--   message       the cancelled records' message
--   cause         the cancelled records' cause (wasmq.broker.causes.Cause.CANCELLED)
--   counter       the counters field to bump ("failed:<cause>")
--   task_prefix   a record's key is task_prefix .. tid (broker/keys.py task())
--   input_prefix  an input's key is input_prefix .. tid (broker/keys.py task_input())
-- returns {next offset, tasks cancelled, messages removed, 1 when the walk is over}

local queue = KEYS[1]
local pending = KEYS[2]
local counters = KEYS[3]

local mode = ARGV[1]
local offset = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local cfid = ARGV[4]
local only_tid = ARGV[5]
local cutoff = tonumber(ARGV[6])
local now = ARGV[7]
local ttl = ARGV[8]
local channel = ARGV[9]
local message = ARGV[10]
local cause = ARGV[11]
local counter = ARGV[12]
local task_prefix = ARGV[13]
local input_prefix = ARGV[14]

local TOMBSTONE = '\0wasmq-purged\0'

-- Cancel `tid` if it is queued and in scope; true if its record now says cancelled.
local function cancel(tid)
  if only_tid ~= '' and tid ~= only_tid then return false end
  local record = task_prefix .. tid
  local status, fn, created, why = unpack(redis.call(
    'HMGET', record, 'status', 'cfid', 'createdAt', 'cause'))
  if status == 'failed' and why == cause then return true end  -- cancelled before
  if status ~= 'queued' then return false end
  if cfid ~= '' and fn ~= cfid then return false end
  if tonumber(created or '0') > cutoff then return false end
  redis.call('HSET', record, 'status', 'failed', 'message', message, 'cause', cause,
             'finishedAt', now)
  redis.call('HDEL', record, 'job')
  redis.call('EXPIRE', record, ttl)
  redis.call('DEL', input_prefix .. tid)
  redis.call('ZREM', pending, tid)
  redis.call('HINCRBY', counters, counter, 1)
  redis.call('PUBLISH', channel, tid .. '\n' .. cmsgpack.pack(redis.call('HGETALL', record)))
  return 'now'
end

local cancelled, removed = 0, 0

-- records: the pending set holds every task no worker has claimed yet.
if mode == 'records' then
  local tids = redis.call('ZRANGE', pending, offset, offset + count - 1)
  for _, tid in ipairs(tids) do
    local outcome = cancel(tid)
    if outcome == 'now' then
      cancelled = cancelled + 1
    elseif outcome then
      redis.call('ZREM', pending, tid)  -- a stale entry of a task cancelled earlier
      removed = removed + 1
    end
  end
  return {offset + #tids - cancelled - removed, cancelled, 0, #tids < count and 1 or 0}
end

-- messages: drop the queue's messages of cancelled tasks (a message's headers.id
-- is its task's tid), marking them first and removing the marks in one LREM. A
-- batch's message (headers.task 'wasmq.run_batch', its id its first call's tid)
-- stays: it may carry calls that were not cancelled, and the claim skips the ones
-- that were.
local messages = redis.call('LRANGE', queue, offset, offset + count - 1)
for i, body in ipairs(messages) do
  local ok, decoded = pcall(cjson.decode, body)
  local tid = ok and type(decoded) == 'table' and type(decoded.headers) == 'table'
    and decoded.headers.task ~= 'wasmq.run_batch' and decoded.headers.id
  if type(tid) == 'string' then
    local outcome = cancel(tid)
    if outcome then
      if outcome == 'now' then cancelled = cancelled + 1 end
      redis.call('LSET', queue, offset + i - 1, TOMBSTONE)
      removed = removed + 1
    end
  end
end
if removed > 0 then redis.call('LREM', queue, 0, TOMBSTONE) end
return {offset + #messages - removed, cancelled, removed, #messages < count and 1 or 0}
