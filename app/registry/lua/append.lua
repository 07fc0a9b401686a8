-- ARGV: prefix, runId, owner, first position, then type and data JSON of each event.
-- Returns 1, or 0 if the run is not the owner's running run or a position is neither the next one
-- nor holds this very event already. A retry of an append whose answer was lost (it timed out,
-- and landed) is so recognised: a redelivered or zombie writer can neither append twice nor write
-- another's run.
local run = prefix .. 'run:' .. ARGV[2]
local f = redis.pcall('HMGET', run, 'status', 'owner', 'count')
if f.err or f[1] ~= 'running' or f[2] ~= ARGV[3] then return 0 end
local position, count = tonumber(ARGV[4]), tonumber(f[3])
local stream = prefix .. 'stream:' .. ARGV[2]
if position <= count then
  local last = position + (#ARGV - 4) / 2 - 1
  if last > count then return 0 end
  local landed = redis.call('XRANGE', stream, '0-' .. position, '0-' .. last)
  if #landed ~= last - position + 1 then return 0 end
  for i, entry in ipairs(landed) do
    local fields = entry[2]  -- t, <type>, d, <data>
    if fields[2] ~= ARGV[3 + 2 * i] or fields[4] ~= ARGV[4 + 2 * i] then return 0 end
  end
  return 1
end
if position ~= count + 1 then return 0 end
for i = 5, #ARGV, 2 do
  redis.call('XADD', stream, '0-' .. position, 't', ARGV[i], 'd', ARGV[i + 1])
  position = position + 1
end
redis.call('HSET', run, 'count', position - 1)
return 1
