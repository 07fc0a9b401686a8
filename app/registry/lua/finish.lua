-- ARGV: prefix, runId, owner, ttl_ms, eventsDigest, bodyGzip, count, stream_grace_ms, sweep_slice.
-- Makes the owner's running run done: its transcript stored, its TTL started, its stream ended
-- (and kept a little while for readers still on it). Returns 1, or 0 if it is not the owner's.
-- A retry of a finish that landed (done, with this transcript) is 1 and changes nothing.
local run_id = ARGV[2]
local run = prefix .. 'run:' .. run_id
local f = redis.pcall('HMGET', run, 'status', 'owner', 'count', 'cacheKey', 'scenarioId', 'eventsDigest')
if f.err then return 0 end
if f[1] == 'done' and f[6] == ARGV[5] and tonumber(f[3]) == tonumber(ARGV[7]) then return 1 end
if f[1] ~= 'running' or f[2] ~= ARGV[3] or tonumber(f[3]) ~= tonumber(ARGV[7]) then return 0 end
local now = now_ms()
sweep(now, tonumber(ARGV[9]))
local expires = now + tonumber(ARGV[4])
redis.call('HSET', run, 'status', 'done', 'eventsDigest', ARGV[5], 'bodyGzip', ARGV[6], 'expiresAt', expires)
redis.call('HDEL', run, 'owner')
redis.call('PEXPIREAT', run, expires)
redis.call('PEXPIREAT', prefix .. 'key:' .. f[4], expires)
redis.call('ZREM', prefix .. 'running', run_id)
redis.call('ZADD', prefix .. 'lru', expires, f[5] .. ' ' .. f[4])
local stream = prefix .. 'stream:' .. run_id
redis.call('XADD', stream, '0-' .. (tonumber(f[3]) + 1), 'end', 'done')
redis.call('PEXPIRE', stream, ARGV[8])
return 1
