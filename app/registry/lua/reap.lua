-- ARGV: prefix, limit, error message, retention_ms. Fails running runs whose lease lapsed (their
-- executor died: its process killed, its host lost). Returns how many.
local lapsed = redis.call('ZRANGEBYSCORE', prefix .. 'running', '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[2]))
local failed = 0
for _, run_id in ipairs(lapsed) do
  failed = failed + fail_run(run_id, '', 'ENGINE_ERROR', ARGV[3], tonumber(ARGV[4]))
end
return failed
