-- ARGV: prefix, lease_ms, then runId and owner of each run this process executes.
-- Extends their leases; returns the runIds that are no longer the owner's running runs.
local lease_until = now_ms() + tonumber(ARGV[2])
local lost = {}
for i = 3, #ARGV, 2 do
  local f = redis.pcall('HMGET', prefix .. 'run:' .. ARGV[i], 'status', 'owner')
  if not f.err and f[1] == 'running' and f[2] == ARGV[i + 1] then
    redis.call('ZADD', prefix .. 'running', 'XX', lease_until, ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
