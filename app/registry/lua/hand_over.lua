-- ARGV: prefix, runId, owner, wait_ms. The starter of a running run gives its execution up to a
-- worker: the run has no executor until a worker takes it, and fails if none does within wait_ms
-- (its lease). Returns 1, or 0 if the run is not the owner's running run.
local run = prefix .. 'run:' .. ARGV[2]
local f = redis.pcall('HMGET', run, 'status', 'owner')
if f.err or f[1] ~= 'running' or f[2] ~= ARGV[3] then return 0 end
redis.call('HDEL', run, 'executor')
redis.call('ZADD', prefix .. 'running', 'XX', now_ms() + tonumber(ARGV[4]), ARGV[2])
return 1
