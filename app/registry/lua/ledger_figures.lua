-- ARGV: prefix, latest, ledger_ms, ledger_keys.
-- Returns {keys, reproduced, diverged, divergence...} (the latest divergences, newest first).
ledger_forget(now_ms(), tonumber(ARGV[3]), tonumber(ARGV[4]))
local counts = redis.call('HMGET', prefix .. 'ledger-counters', 'reproduced', 'diverged')
local keys = redis.call('ZCARD', prefix .. 'ledger-keys') + redis.call('ZCARD', prefix .. 'ledger-diverged')
local answer = {keys, tonumber(counts[1]) or 0, tonumber(counts[2]) or 0}
local latest = tonumber(ARGV[2])
if latest > 0 then
  for _, divergence in ipairs(redis.call('LRANGE', prefix .. 'ledger-divergences', 0, latest - 1)) do
    table.insert(answer, divergence)
  end
end
return answer
