-- ARGV: prefix, cacheKey, ttl_ms. Returns {runId, status} of the key's run (a hit), or nil.
return touch(ARGV[2], tonumber(ARGV[3]))
