-- swap_record.lua: change a function's record, and what hangs on it, in one step.
--
-- Every change of a registered function goes through here (broker/registry.py:
-- replace, delete; broker/builds.py: a model build's finish and failure), so a
-- DELETE landing as a build finishes, or two uploads under one cfid, can never
-- leave a binary no record points to, a record pointing to a missing binary, or
-- a record `building` with no build pending (issue 20). The caller read the
-- record, computed the new one, and passes both: the swap happens only if the
-- record is still the one read (else 0, and the caller reads again).
--
-- Writes that free memory come first: Redis lets a script whose first write is
-- not one that grows memory go on writing past maxmemory, so a full store still
-- deletes functions and records a build's failure ("storage is full").
--
-- keys=[record, index, build, lease, builds, old_refs, old_blob, old_artifacts, hot,
--       new_refs, new_blob]
--   record         string  the function's record (JSON)
--   index          zset    cfid -> createdAt, the listing
--   build          hash    the function's pending model build (id, upload, ...)
--   lease          string  the token of the gateway running that build
--   builds         set     cfids with a build pending
--   old_refs       set     cfids using the binary the record points to now
--   old_blob       string  that binary
--   old_artifacts  hash    engine fingerprint -> that binary compiled
--   hot            zset    sha256 -> when a worker last loaded it
--   new_refs       set     cfids using the binary the new record points to
--   new_blob       string  that binary
-- args=[expected, new, cfid, build_id, forget, old_sha, new_sha, score]
--   expected  the record as read ('' : there must be none)
--   new       the record to write ('' : delete the function)
--   build_id  '' or the pending build that must still be the function's
--   forget    '1' to end the pending build (its upload, lease and place)
--   old_sha   '' or the binary the record stops using: released, deleted with its
--             artifacts once no function uses it
--   new_sha   '' or the binary the new record uses: it must exist, and is referenced
--   score     '' or the index score of a new function
-- returns 1 done, 0 the record changed since it was read, -1 the build is no longer
-- the function's, -2 the new binary is gone (released meanwhile: store it again)

local record, index, build, lease, builds = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local old_refs, old_blob, old_artifacts, hot = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local new_refs, new_blob = KEYS[10], KEYS[11]
local expected, new, cfid, build_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local forget, old_sha, new_sha, score = ARGV[5], ARGV[6], ARGV[7], ARGV[8]

local current = redis.call('GET', record)
if (expected == '' and current) or (expected ~= '' and current ~= expected) then
  return 0
end
if build_id ~= '' and redis.call('HGET', build, 'id') ~= build_id then
  return -1
end
if new_sha ~= '' and redis.call('EXISTS', new_blob) == 0 then
  return -2
end

-- Writes that free memory first (see above).
if forget == '1' then
  redis.call('DEL', build, lease)
  redis.call('SREM', builds, cfid)
end
if old_sha ~= '' then
  redis.call('SREM', old_refs, cfid)
  if redis.call('SCARD', old_refs) == 0 then
    redis.call('DEL', old_blob, old_artifacts)
    redis.call('ZREM', hot, old_sha)
  end
end
if new == '' then
  redis.call('DEL', record)
  redis.call('ZREM', index, cfid)
else
  redis.call('SET', record, new)
  if score ~= '' then
    redis.call('ZADD', index, score, cfid)
  end
end
if new_sha ~= '' then
  redis.call('SADD', new_refs, cfid)
end
return 1
