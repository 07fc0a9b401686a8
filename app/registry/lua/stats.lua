-- ARGV: prefix, top_scenarios. Sweeps what expired (at most 10,000 entries a call; the writes
-- sweep too), then reads the counts and the scenarios with the most entries.
for _ = 1, 10 do if sweep(now_ms(), 1000) < 1000 then break end end
local scenarios = prefix .. 'scenario-entries'
local top = {}
if tonumber(ARGV[2]) > 0 then top = redis.call('ZRANGE', scenarios, 0, tonumber(ARGV[2]) - 1, 'WITHSCORES') end
return {redis.call('ZCARD', prefix .. 'lru'), redis.call('ZCARD', prefix .. 'running'), top,
        redis.call('ZCARD', scenarios), redis.call('HGETALL', prefix .. 'counters')}
