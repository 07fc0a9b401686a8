-- ARGV: prefix, runId, owner, first position, then type and data JSON of each event.
-- Returns 1, or 0 if the run is not the owner's running run or a position is not the next one:
-- a redelivered or zombie writer can neither append twice nor write another's run.
local run = prefix .. 'run:' .. ARGV[2]
local f = redis.pcall('HMGET', run, 'status', 'owner', 'count')
if f.err or f[1] ~= 'running' or f[2] ~= ARGV[3] then return 0 end
local position = tonumber(ARGV[4])
if position ~= tonumber(f[3]) + 1 then return 0 end
local stream = prefix .. 'stream:' .. ARGV[2]
for i = 5, #ARGV, 2 do
  redis.call('XADD', stream, '0-' .. position, 't', ARGV[i], 'd', ARGV[i + 1])
  position = position + 1
end
redis.call('HSET', run, 'count', position - 1)
return 1
