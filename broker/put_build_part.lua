-- put_build_part.lua: one part of a pending build's upload (broker/chunks.py),
-- written only while that build is still the pending one.
--
-- An upload over a part's size is written after the transaction that pends its
-- build, a part per call (one transaction of 548 MB outlasted the client's socket
-- timeout); a new upload meanwhile replaces the build, and its parts must not be
-- mixed with this one's.
--
-- keys=[build]
--   build  hash  the pending build: id, attempts, limits, private, upload or its parts
-- args=[id, field, value]
-- returns 1 written, 0 the build is over or another one is pending

local build = KEYS[1]
local id, field, value = ARGV[1], ARGV[2], ARGV[3]

if redis.call('HGET', build, 'id') ~= id then
  return 0
end
redis.call('HSET', build, field, value)
return 1
