-- ARGV: prefix, runId, owner, executor, lease_ms. A worker takes a queued run to execute it: only
-- a running run with the job's owner token and no executor yet, so a job delivered twice, or
-- taken after its run failed for want of a worker, executes nothing. Returns 1 if taken.
local run = prefix .. 'run:' .. ARGV[2]
local f = redis.pcall('HMGET', run, 'status', 'owner', 'executor')
if f.err or f[1] ~= 'running' or f[2] ~= ARGV[3] then return 0 end
-- Taken by this very executor already: a retry of a take-over whose answer was lost.
if f[3] == ARGV[4] then
  redis.call('ZADD', prefix .. 'running', 'XX', now_ms() + tonumber(ARGV[5]), ARGV[2])
  return 1
end
if f[3] then return 0 end
local lease = redis.call('ZSCORE', prefix .. 'running', ARGV[2])
if not lease or tonumber(lease) <= now_ms() then return 0 end  -- its wait is over: the reaper fails it
redis.call('HSET', run, 'executor', ARGV[4])
redis.call('ZADD', prefix .. 'running', 'XX', now_ms() + tonumber(ARGV[5]), ARGV[2])
return 1
