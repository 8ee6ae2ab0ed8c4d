-- needs agent_lib.lua in front (scripts.py joins them)
local old = redis.call('HGET', KEYS[1], ARGV[1])
local oldgroups = nil
if old then oldgroups = cjson.decode(old).groups end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local load = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
reindex(ARGV[3], ARGV[1], cjson.decode(ARGV[2]), load, oldgroups)
-- ARGV[4]: the agent.status webhook event, when a subscription wants it; kept with this write if the
-- status or the connection changed (gateway/webhooks_cluster.py reads KEYS[3]).
if ARGV[4] ~= '' then
  local new = cjson.decode(ARGV[2])
  local was = old and cjson.decode(old)
  if (not was) or was.status ~= new.status or was.connected ~= new.connected then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', 100000, '*', 'e', ARGV[4])
  end
end
return load
