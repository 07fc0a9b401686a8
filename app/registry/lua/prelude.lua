-- Shared by every script: ARGV[1] is the key prefix. Keys (under the prefix):
--   key:<cacheKey>    the runId of the key's run (no expiry while it runs)
--   run:<runId>       a hash: the run's identity, status, count, hits, and its transcript once done
--   stream:<runId>    its events as they are recorded: ids 0-<position>, fields t (type) and
--                     d (data JSON); then one entry with field "end" (done or failed)
--   running           a sorted set of running runIds by lease expiry (epoch ms)
--   lru               a sorted set of "<scenarioId> <cacheKey>" of done runs by expiry, which,
--                     with one TTL renewed only on hits, is also least-recently-used order
--   runs              a sorted set of runIds by creation (epoch ms), for the listing: every run
--                     started; ones gone since are dropped lazily (start.lua, list_runs.lua)
--   scenario-entries  a sorted set of scenarios by minus their entries (running and done)
--   counters          a hash: hits, misses, evictions, expirations, failures, engine runs
--   ledger:<cacheKey> a hash: the key's determinism reference (r: runId, d: its digest, raw) and
--                     its checks (n) and divergences (x); expires its ledger time after the last check
--   ledger-keys       a sorted set of the ledger's cache keys that never diverged, by their last check
--                     (epoch ms; checks within one millisecond 1/1024 ms apart, in order)
--   ledger-diverged   the same, of the keys that diverged: forgotten only once no other key is left
--   ledger-counters   a hash: reproduced, diverged (checks since the ledger began)
--   ledger-divergences  a list of the latest divergences, newest first (ledger_divergence's layout)
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

-- The determinism ledger. A key forgotten (its time after its last check passed, or pushed out by
-- the cap, least recently checked first) starts afresh. At most 64 stale keys go per call.
local function ledger_forget(now, ledger_ms, max_keys)
  local clean, diverged = prefix .. 'ledger-keys', prefix .. 'ledger-diverged'
  for _, keys in ipairs({clean, diverged}) do
    local stale = redis.call('ZRANGEBYSCORE', keys, '-inf', now - ledger_ms, 'LIMIT', 0, 64)
    for _, cache_key in ipairs(stale) do
      redis.call('ZREM', keys, cache_key)
      redis.call('DEL', prefix .. 'ledger:' .. cache_key)
    end
  end
  -- Past the bound, keys that never diverged go first: a caller making new keys by the thousand
  -- cannot push a divergence out of the ledger while any other key is left to forget.
  local over = redis.call('ZCARD', clean) + redis.call('ZCARD', diverged) - max_keys
  for _, keys in ipairs({clean, diverged}) do
    if over > 0 then
      local oldest = redis.call('ZPOPMIN', keys, over)
      for i = 1, #oldest, 2 do redis.call('DEL', prefix .. 'ledger:' .. oldest[i]) end
      over = over - #oldest / 2
    end
  end
end

-- The key's ledger entry as {runId, digest, checks, divergences}, or false.
local function ledger_entry(cache_key)
  local f = redis.pcall('HMGET', prefix .. 'ledger:' .. cache_key, 'r', 'd', 'n', 'x')
  if f.err or not f[1] or not f[2] then return false end
  return {f[1], f[2], tonumber(f[3]) or 0, tonumber(f[4]) or 0}
end

-- A check's place in the forgetting order: its time, or just after the latest place given while
-- the clock stays in one millisecond (a sorted set orders equal scores by member, which would
-- make checks of one millisecond forgotten in the order of their keys' names, not of the checks).
-- 1/1024 ms is exact in a double at today's epoch milliseconds; formatted whole (Lua's own
-- number-to-string keeps 14 digits).
local function ledger_place(now)
  local place = now
  for _, keys in ipairs({prefix .. 'ledger-keys', prefix .. 'ledger-diverged'}) do
    local latest = redis.call('ZREVRANGE', keys, 0, 0, 'WITHSCORES')
    if latest[2] then place = math.max(place, tonumber(latest[2]) + 1 / 1024) end
  end
  return string.format('%.17g', place)
end

-- Hold `digest` (of run `run_id`'s transcript, or of its replay) against the key's reference. A
-- key without one takes {ref_run, ref_digest} as its reference first; then, unless
-- `counted_when_new` is false (a run's finish: it is the reference itself), the check is counted.
-- A divergence is listed: 64 bytes of both digests (reference first), then
-- "<at>\n<cacheKey>\n<engineCodeHash>\n<reference runId>\n<runId>".
-- Returns {result, runId, digest, checks, divergences} (the entry after the check).
local function ledger_check(cache_key, code_hash, ref_run, ref_digest, run_id, digest, counted_when_new, ledger_ms,
                            max_keys)
  local now = now_ms()
  local entry_key = prefix .. 'ledger:' .. cache_key
  local entry = ledger_entry(cache_key)
  local result = false
  if not entry then
    redis.call('DEL', entry_key)  -- whatever sat there that was not an entry
    redis.call('HSET', entry_key, 'r', ref_run, 'd', ref_digest, 'n', 0, 'x', 0)
    entry = {ref_run, ref_digest, 0, 0}
    if not counted_when_new then result = 'reference' end
  end
  if not result then
    entry[3] = redis.call('HINCRBY', entry_key, 'n', 1)
    if entry[2] == digest then
      result = 'reproduced'
      redis.call('HINCRBY', prefix .. 'ledger-counters', 'reproduced', 1)
    else
      result = 'diverged'
      entry[4] = redis.call('HINCRBY', entry_key, 'x', 1)
      redis.call('HINCRBY', prefix .. 'ledger-counters', 'diverged', 1)
      local divergences = prefix .. 'ledger-divergences'
      redis.call('LPUSH', divergences, entry[2] .. digest .. string.format('%d', now) .. '\n' .. cache_key .. '\n'
                 .. code_hash .. '\n' .. entry[1] .. '\n' .. run_id)
      redis.call('LTRIM', divergences, 0, 19)
    end
  end
  redis.call('PEXPIRE', entry_key, ledger_ms)
  local place = ledger_place(now)
  if entry[4] > 0 then
    redis.call('ZREM', prefix .. 'ledger-keys', cache_key)
    redis.call('ZADD', prefix .. 'ledger-diverged', place, cache_key)
  else
    redis.call('ZADD', prefix .. 'ledger-keys', place, cache_key)
  end
  ledger_forget(now, ledger_ms, max_keys)
  return {result, entry[1], entry[2], entry[3], entry[4]}
end
