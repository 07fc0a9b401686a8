-- ARGV: prefix, runId, owner, ttl_ms, eventsDigest, bodyGzip, count, stream_grace_ms, sweep_slice,
-- ledger_ms, ledger_keys.
-- Makes the owner's running run done: its transcript stored, its TTL started, its stream ended
-- (and kept a little while for readers still on it), and its digest held against the key's
-- determinism reference (ledger_check). Returns ledger_check's answer, or 0 if the run is not the
-- owner's. A retry of a finish that landed (done, with this transcript) answers what the ledger
-- holds for it and changes nothing.
local run_id = ARGV[2]
local run = prefix .. 'run:' .. run_id
local f = redis.pcall('HMGET', run, 'status', 'owner', 'count', 'cacheKey', 'scenarioId', 'eventsDigest',
                      'engineCodeHash')
if f.err then return 0 end
if f[1] == 'done' and f[6] == ARGV[5] and tonumber(f[3]) == tonumber(ARGV[7]) then
  local entry = ledger_entry(f[4]) or {run_id, ARGV[5], 0, 0}
  local result = 'diverged'
  if entry[1] == run_id then result = 'reference' elseif entry[2] == ARGV[5] then result = 'reproduced' end
  return {result, entry[1], entry[2], entry[3], entry[4]}
end
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
return ledger_check(f[4], f[7], run_id, ARGV[5], run_id, ARGV[5], false, tonumber(ARGV[10]), tonumber(ARGV[11]))
