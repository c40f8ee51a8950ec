-- release_binary.lua: a function gives up a binary it stored but does not use.
--
-- A build or an upload stores its binary (and a reference to it) before its
-- record points there; when the record change is dropped (the function was
-- deleted, or another upload won), the reference goes, and the binary with its
-- artifacts once nothing references it, unless the record uses that binary
-- after all (the same module uploaded again): checked here, in one step with
-- the release, so that no binary a record points to is ever deleted.
--
-- keys=[record, refs, blob, artifacts, hot]
--   record     string  the function's record (JSON), or none
--   refs       set     cfids using the binary
--   blob       string  the binary
--   artifacts  hash    engine fingerprint -> the binary compiled
--   hot        zset    sha256 -> when a worker last loaded it
-- args=[cfid, sha]
-- returns 1 released, 0 the record uses it

local record, refs, blob, artifacts, hot = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local cfid, sha = ARGV[1], ARGV[2]

local current = redis.call('GET', record)
if current and cjson.decode(current)['sha256'] == sha then
  return 0
end
redis.call('SREM', refs, cfid)
if redis.call('SCARD', refs) == 0 then
  redis.call('DEL', blob, artifacts)
  redis.call('ZREM', hot, sha)
end
return 1
