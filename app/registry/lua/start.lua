-- ARGV: prefix, cacheKey, ttl_ms, runId prefix, now_ms (the service's clock), owner, lease_ms,
-- max_entries, scenarioId, engineCodeHash, engineName, engineVersion, executor (this process),
-- sweep_slice.
-- Returns {'found', runId, status} (a hit), {'started', runId} or {'full'}.
local cache_key, ttl, max_entries = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[8])
-- The key's run started by this very owner (its token is secret and new): a retry of a start
-- whose answer was lost. The run is this caller's to execute.
local claimed = string_at(prefix .. 'key:' .. cache_key)
if claimed and redis.pcall('HGET', prefix .. 'run:' .. claimed, 'owner') == ARGV[6] then
  return {'started', claimed}
end
local found = touch(cache_key, ttl)
if found then return {'found', found[1], found[2]} end
local now = now_ms()
sweep(now, tonumber(ARGV[14]))
-- Room: the least recently used done runs are evicted; a running run never is.
local lru, running = prefix .. 'lru', prefix .. 'running'
while redis.call('ZCARD', lru) + redis.call('ZCARD', running) >= max_entries do
  local oldest = redis.call('ZRANGE', lru, 0, 0)[1]
  if not oldest then return {'full'} end
  local oldest_entry = prefix .. 'key:' .. string.match(oldest, ' (%S+)$')
  local oldest_run = string_at(oldest_entry)
  if oldest_run then
    redis.call('DEL', oldest_entry, prefix .. 'run:' .. oldest_run)
    redis.call('ZREM', prefix .. 'runs', oldest_run)
  end
  forget(oldest, 'evictions')
end
-- The runId takes the first millisecond from the service's now that no run, of any key or
-- deploy, holds: the cache key alone would not tell two deploys' runs of one scenario apart.
local created_at = tonumber(ARGV[5])
while redis.call('EXISTS', prefix .. 'run:' .. ARGV[4] .. string.format('%d', created_at)) == 1 do
  created_at = created_at + 1
end
local run_id = ARGV[4] .. string.format('%d', created_at)
redis.call('HSET', prefix .. 'run:' .. run_id, 'runId', run_id, 'cacheKey', cache_key, 'scenarioId', ARGV[9],
           'engineCodeHash', ARGV[10], 'engineName', ARGV[11], 'engineVersion', ARGV[12], 'status', 'running',
           'owner', ARGV[6], 'executor', ARGV[13], 'count', 0, 'hits', 0)
redis.call('SET', prefix .. 'key:' .. cache_key, run_id)
redis.call('ZADD', running, now + tonumber(ARGV[7]), run_id)
-- The listing's index. Runs that Redis expires leave it lazily: two members drawn at random are
-- dropped if their run is gone, so gone ones stay about as many as live ones (each start adds
-- one, and removes two times the share that is gone) whether or not anyone lists runs.
local index = prefix .. 'runs'
redis.call('ZADD', index, string.format('%d', created_at), run_id)
for _, member in ipairs(redis.call('ZRANDMEMBER', index, 2)) do
  if redis.call('EXISTS', prefix .. 'run:' .. member) == 0 then redis.call('ZREM', index, member) end
end
redis.call('ZINCRBY', prefix .. 'scenario-entries', -1, ARGV[9])
redis.call('HINCRBY', prefix .. 'counters', 'misses', 1)
return {'started', run_id}
