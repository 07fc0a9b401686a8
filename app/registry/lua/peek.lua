-- ARGV: prefix, cacheKey. 1 if the key has a run (running, or done and not expired: Redis
-- expires its keys), renewing nothing and counting nothing; else 0.
if entry_run(ARGV[2]) then return 1 end
return 0
