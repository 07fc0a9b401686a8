-- Shared by every script: ARGV[1] is the key prefix. Keys (under the prefix):
--   key:<cacheKey>    the runId of the key's run (no expiry while it runs)
--   run:<runId>       a hash: the run's identity, status, count, hits, and its transcript once done
--   stream:<runId>    its events as they are recorded: ids 0-<position>, fields t (type) and
--                     d (data JSON); then one entry with field "end" (done or failed)
--   running           a sorted set of running runIds by lease expiry (epoch ms)
--   lru               a sorted set of "<scenarioId> <cacheKey>" of done runs by expiry, which,
--                     with one TTL renewed only on hits, is also least-recently-used order
--   scenario-entries  a sorted set of scenarios by minus their entries (running and done)
--   counters          a hash: hits, misses, evictions, expirations, failures, engine runs
--   signing-key       the fleet's evidence signing key (PKCS#8 PEM), when none is configured
local prefix = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A string key's value; false when absent or when something else sits there.
local function string_at(key)
  local value = redis.pcall('GET', key)
  if type(value) == 'table' then return false end
  return value
end

local function forget_scenario(scenario)
  if tonumber(redis.call('ZINCRBY', prefix .. 'scenario-entries', 1, scenario)) >= 0 then
    redis.call('ZREM', prefix .. 'scenario-entries', scenario)
  end
end

-- A done entry leaves the books (Redis expires or deletes its keys).
local function forget(member, counter)
  redis.call('ZREM', prefix .. 'lru', member)
  forget_scenario(string.match(member, '^(%S+) '))
  redis.call('HINCRBY', prefix .. 'counters', counter, 1)
end

local function sweep(now, limit)
  local expired = redis.call('ZRANGEBYSCORE', prefix .. 'lru', '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(expired) do forget(member, 'expirations') end
  return #expired
end

-- The runId, scenario and status of the key's run, if its entry names a run record that is there
-- and whole; false if not: absent, evicted by Redis' own memory policy, or not written by us.
local function entry_run(cache_key)
  local entry = prefix .. 'key:' .. cache_key
  local run_id = string_at(entry)
  if not run_id then return false end
  local f = redis.pcall('HMGET', prefix .. 'run:' .. run_id, 'scenarioId', 'cacheKey', 'status', 'count',
                        'eventsDigest', 'bodyGzip')
  if f.err then return false end
  if not f[1] then  -- the run hash is gone: so is the entry
    redis.call('DEL', entry)
    return false
  end
  if f[2] ~= cache_key or not tonumber(f[4]) then return false end
  if f[3] == 'done' then
    if not f[5] or not f[6] then return false end
  elseif f[3] ~= 'running' then
    return false
  end
  return run_id, f[1], f[3]
end

-- A lookup hit: the key's run (runId, status), counted; a done run is renewed, its key and
-- record expiring at one instant. A running run has no expiry yet.
local function touch(cache_key, ttl)
  local run_id, scenario, status = entry_run(cache_key)
  if not run_id then return false end
  local run = prefix .. 'run:' .. run_id
  redis.call('HINCRBY', run, 'hits', 1)
  redis.call('HINCRBY', prefix .. 'counters', 'hits', 1)
  if status == 'done' then
    local expires = now_ms() + ttl
    redis.call('PEXPIREAT', prefix .. 'key:' .. cache_key, expires)
    redis.call('PEXPIREAT', run, expires)
    redis.call('HSET', run, 'expiresAt', expires)
    redis.call('ZADD', prefix .. 'lru', 'XX', expires, scenario .. ' ' .. cache_key)
  end
  return {run_id, status}
end

-- Make a running run failed: its key is free, its record and stream kept for `retention` ms, and
-- its stream ends with the error. With an owner, only the owner's run; without (owner == ''),
-- only a run whose lease has lapsed (its executor is gone). Returns 1 if it failed the run.
local function fail_run(run_id, owner, error_type, error_message, retention)
  local run = prefix .. 'run:' .. run_id
  local f = redis.pcall('HMGET', run, 'status', 'owner', 'cacheKey', 'scenarioId', 'count')
  if f.err or f[1] ~= 'running' then
    if not f.err and not f[1] then redis.call('ZREM', prefix .. 'running', run_id) end  -- gone: forget it
    return 0
  end
  local now = now_ms()
  if owner ~= '' then
    if f[2] ~= owner then return 0 end
  else
    local lease = redis.call('ZSCORE', prefix .. 'running', run_id)
    if lease and tonumber(lease) > now then return 0 end
  end
  redis.call('HSET', run, 'status', 'failed', 'errorType', error_type, 'errorMessage', error_message, 'failedAt', now)
  redis.call('HDEL', run, 'owner')
  redis.call('PEXPIRE', run, retention)
  local entry = prefix .. 'key:' .. f[3]
  if string_at(entry) == run_id then redis.call('DEL', entry) end
  redis.call('ZREM', prefix .. 'running', run_id)
  forget_scenario(f[4])
  redis.call('HINCRBY', prefix .. 'counters', 'failures', 1)
  local stream = prefix .. 'stream:' .. run_id
  redis.call('XADD', stream, '0-' .. (tonumber(f[5]) + 1), 'end', 'failed', 'et', error_type, 'em', error_message)
  redis.call('PEXPIRE', stream, retention)
  return 1
end
