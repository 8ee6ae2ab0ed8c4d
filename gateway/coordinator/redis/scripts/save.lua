-- Write a conversation doc unless a newer lock holder (higher fence) already wrote it.
-- The state's new version is ARGV[3], a random token the node drew, not a counter: if Redis
-- loses a save (AOF everysec, a failover to a replica behind), the next save can't repeat the
-- lost one's version, so a node's copy of the lost state can never pass for the new one.
-- Returns the new version, or -1 if fenced off.
local f = tonumber(redis.call('HGET', KEYS[2], 'fence') or '0')
local mine = tonumber(ARGV[2])
if mine < f then return -1 end
redis.call('HSET', KEYS[2], 'fence', mine)
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'ver', ARGV[3])
return tonumber(ARGV[3])
