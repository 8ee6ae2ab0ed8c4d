-- Write a conversation doc unless a newer lock holder (higher fence) already wrote it.
-- Returns the state's new version (1, 2, ...; the doc's creation is version 0), or -1 if fenced off.
local f = tonumber(redis.call('HGET', KEYS[2], 'fence') or '0')
local mine = tonumber(ARGV[2])
if mine < f then return -1 end
redis.call('HSET', KEYS[2], 'fence', mine)
redis.call('SET', KEYS[1], ARGV[1])
return redis.call('HINCRBY', KEYS[2], 'ver', 1)
