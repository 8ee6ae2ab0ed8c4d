-- KEYS[1] the queue, KEYS[2] when each entry joined it (enqueue.lua); ARGV[1] the conversation.
-- Returns how many entries left the list (0 or 1).
local n = redis.call('LREM', KEYS[1], 0, ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return n
