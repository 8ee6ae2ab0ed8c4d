-- Write a conversation doc unless a newer lock holder (higher fence) already wrote it.
local f = tonumber(redis.call('HGET', KEYS[2], 'fence') or '0')
local mine = tonumber(ARGV[2])
if mine < f then return 0 end
redis.call('HSET', KEYS[2], 'fence', mine)
redis.call('SET', KEYS[1], ARGV[1])
return 1
