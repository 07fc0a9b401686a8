-- ARGV: prefix, limit, message for a lost executor, retention_ms, message for a run no worker took.
-- Fails running runs whose lease lapsed: their executor died (its process killed, its host lost),
-- or, queued, no worker took them in time. Returns how many.
local lapsed = redis.call('ZRANGEBYSCORE', prefix .. 'running', '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[2]))
local failed = 0
for _, run_id in ipairs(lapsed) do
  local executor = redis.pcall('HGET', prefix .. 'run:' .. run_id, 'executor')
  local message = ARGV[3]
  if executor == false then message = ARGV[5] end
  failed = failed + fail_run(run_id, '', 'ENGINE_ERROR', message, tonumber(ARGV[4]))
end
return failed
