-- Take the lease and, only if it was free, the next fencing token: one round trip per attempt,
-- and failed attempts burn no tokens. The lease's value is the token, for the unlock check.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[1])
return token
