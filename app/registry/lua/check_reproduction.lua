-- ARGV: prefix, cacheKey, engineCodeHash, runId, its eventsDigest, the replay's digest, ledger_ms,
-- ledger_keys. A verify: the replay held against the key's reference (the verified run becomes
-- the reference of a key that has none). Returns ledger_check's answer.
return ledger_check(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[4], ARGV[6], true, tonumber(ARGV[7]), tonumber(ARGV[8]))
