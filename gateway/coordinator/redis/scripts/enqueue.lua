-- KEYS[1] the queue (a list), KEYS[2] when each entry joined it (conv -> ms), KEYS[3] the tenant's
-- groups with a queue (the supervisor's view lists them without KEYS); one hash tag {q:T}.
-- ARGV: conv, '1' to put it in front, the node's wall clock (ms), the group.
if redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
if ARGV[2] == '1' then redis.call('LPUSH', KEYS[1], ARGV[1]) else redis.call('RPUSH', KEYS[1], ARGV[1]) end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
return 1
