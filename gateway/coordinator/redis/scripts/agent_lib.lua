-- Agents: KEYS[1] agents hash (id -> json), KEYS[2] load hash; avail sets share the hash tag (ARGV prefix).
local function eligible(info, load)
  return info.connected and info.status == 'online' and load < info.capacity
end
local function reindex(prefix, id, info, load, oldgroups)
  if oldgroups then
    for _, g in ipairs(oldgroups) do redis.call('ZREM', prefix .. g, id) end
  end
  for _, g in ipairs(info.groups) do
    if eligible(info, load) then redis.call('ZADD', prefix .. g, load, id) else redis.call('ZREM', prefix .. g, id) end
  end
end
local function in_group(info, group)
  for _, g in ipairs(info.groups) do if g == group then return true end end
  return false
end
