-- ARGV: prefix, duration_ms, failed (0 or 1).
local counters = prefix .. 'counters'
redis.call('HINCRBY', counters, 'engine_runs', 1)
redis.call('HINCRBY', counters, 'engine_failures', ARGV[3])
redis.call('HINCRBYFLOAT', counters, 'engine_ms_total', ARGV[2])
