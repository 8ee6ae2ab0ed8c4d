-- needs agent_lib.lua in front (scripts.py joins them)
local old = redis.call('HGET', KEYS[1], ARGV[1])
local oldgroups = nil
if old then oldgroups = cjson.decode(old).groups end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local load = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
reindex(ARGV[3], ARGV[1], cjson.decode(ARGV[2]), load, oldgroups)
return load
