-- ARGV: prefix, runId, owner, error type, error message, retention_ms. Returns 1 if it failed the run.
return fail_run(ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]))
