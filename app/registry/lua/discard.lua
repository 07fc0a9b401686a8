-- ARGV: prefix, runId. Removes a done run found damaged (and its entry, if it names the run), so
-- the key's next lookup starts a new run.
local run = prefix .. 'run:' .. ARGV[2]
local f = redis.pcall('HMGET', run, 'scenarioId', 'cacheKey', 'status')
if f.err or not f[1] or not f[2] or f[3] ~= 'done' then return 0 end
local entry = prefix .. 'key:' .. f[2]
if string_at(entry) == ARGV[2] then redis.call('DEL', entry) end
redis.call('DEL', run)
redis.call('ZREM', prefix .. 'runs', ARGV[2])
if redis.call('ZSCORE', prefix .. 'lru', f[1] .. ' ' .. f[2]) then forget(f[1] .. ' ' .. f[2], 'discarded') end
return 1
