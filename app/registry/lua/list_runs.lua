-- ARGV: prefix, limit, before (a runId, or '' for the newest), before's createdAt, scan bound.
-- Returns {next (a runId, or false), runId, status, r, d, n, x, runId, ...}: each listed run with
-- its key's ledger fields (r, d, n, x: false but for a done run whose key the ledger holds).
-- Runs gone meanwhile (expired, evicted, failed and dropped) are removed from the index as they
-- are met, at most `scan bound` of them a call.
local index = prefix .. 'runs'
local limit, before, bound = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[5])
local now = now_ms()
-- Enough candidates for a full page and every gone run the call may pass, and one more to know
-- whether anything is left.
local wanted = limit + bound + 1
local candidates = {}
if before == '' then
  candidates = redis.call('ZREVRANGEBYSCORE', index, '+inf', '-inf', 'LIMIT', 0, wanted)
else
  -- Runs of before's millisecond that sort before it (equal scores come in reverse runId order),
  -- then the older milliseconds.
  for _, run_id in ipairs(redis.call('ZREVRANGEBYSCORE', index, ARGV[4], ARGV[4])) do
    if run_id < before then table.insert(candidates, run_id) end
  end
  for _, run_id in ipairs(redis.call('ZREVRANGEBYSCORE', index, '(' .. ARGV[4], '-inf', 'LIMIT', 0, wanted)) do
    table.insert(candidates, run_id)
  end
end
local answer, listed, passed = {false}, 0, 0
for _, run_id in ipairs(candidates) do
  if listed == limit or passed == bound then
    answer[1] = listed > 0 and answer[#answer - 5] or run_id
    return answer
  end
  local f = redis.pcall('HMGET', prefix .. 'run:' .. run_id, 'status', 'cacheKey', 'expiresAt')
  if f.err or not f[1] then
    redis.call('ZREM', index, run_id)
    passed = passed + 1
  elseif f[1] == 'done' and (tonumber(f[3]) or 0) <= now then
    passed = passed + 1  -- expiring this very millisecond: Redis removes it
  else
    local ledger = {false, false, false, false}
    if f[1] == 'done' then
      local l = redis.pcall('HMGET', prefix .. 'ledger:' .. f[2], 'r', 'd', 'n', 'x')
      if not l.err and l[1] and l[2] then ledger = l end
    end
    for _, value in ipairs({run_id, f[1], ledger[1], ledger[2], ledger[3] or false, ledger[4] or false}) do
      table.insert(answer, value)
    end
    listed = listed + 1
  end
end
return answer
