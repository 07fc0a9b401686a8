-- ARGV: prefix, duration_ms, failed (0 or 1), outcome, duration bucket index, duration in seconds.
local counters = prefix .. 'counters'
redis.call('HINCRBY', counters, 'engine_runs', 1)
redis.call('HINCRBY', counters, 'engine_failures', ARGV[3])
redis.call('HINCRBYFLOAT', counters, 'engine_ms_total', ARGV[2])
redis.call('HINCRBY', counters, 'duration:' .. ARGV[4] .. ':' .. ARGV[5], 1)
redis.call('HINCRBYFLOAT', counters, 'duration_sum:' .. ARGV[4], ARGV[6])
