-- needs agent_lib.lua in front (scripts.py joins them)
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return -1 end
local load = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if load <= 0 then return 0 end
load = redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
reindex(ARGV[2], ARGV[1], cjson.decode(raw), load, nil)
return load
