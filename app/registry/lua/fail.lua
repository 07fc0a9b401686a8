-- ARGV: prefix, runId, owner, error type, error message, retention_ms. Returns 1 if it failed the
-- run, or if the run failed with this very error already (a retry of a fail that landed).
local f = redis.pcall('HMGET', prefix .. 'run:' .. ARGV[2], 'status', 'errorType', 'errorMessage')
if not f.err and f[1] == 'failed' and f[2] == ARGV[4] and f[3] == ARGV[5] then return 1 end
return fail_run(ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]))
