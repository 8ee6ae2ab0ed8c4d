-- needs agent_lib.lua in front (scripts.py joins them)
local group, prefer, prefix = ARGV[1], ARGV[2], ARGV[3]
local function charge(id)
  local info = cjson.decode(redis.call('HGET', KEYS[1], id))
  local load = redis.call('HINCRBY', KEYS[2], id, 1)
  reindex(prefix, id, info, load, nil)
  return id
end
if prefer ~= '' then
  local raw = redis.call('HGET', KEYS[1], prefer)
  if raw then
    local info = cjson.decode(raw)
    local load = tonumber(redis.call('HGET', KEYS[2], prefer) or '0')
    if in_group(info, group) and eligible(info, load) then return charge(prefer) end
  end
end
local best = redis.call('ZRANGE', prefix .. group, 0, 0)
if #best == 0 then return false end
return charge(best[1])
