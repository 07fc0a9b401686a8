-- ARGV[2]: a signing key (PKCS#8 PEM) made by the caller, kept if the registry keeps none yet.
-- Returns the kept one: of every process asking at once, the first one's.
local key = prefix .. 'signing-key'
local kept = string_at(key)
if kept then return kept end
redis.call('SET', key, ARGV[2])
return ARGV[2]
