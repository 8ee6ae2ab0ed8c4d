-- Append: dedup by client id, next seq, XADD with the seq as the id, trim with the client ids.
local cid = ARGV[1]
if cid ~= '' then
  local s = redis.call('HGET', KEYS[2], cid)
  if s then return {tonumber(s), 1} end
end
local seq = redis.call('HINCRBY', KEYS[3], 'seq', 1)
redis.call('XADD', KEYS[1], seq .. '-1', 'e', ARGV[2], 'c', cid)
if cid ~= '' then redis.call('HSET', KEYS[2], cid, seq) end
local keep = tonumber(ARGV[3])
local n = redis.call('XLEN', KEYS[1])
if n > keep then
  local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', n - keep)
  for _, item in ipairs(old) do
    local f = item[2]
    if f[4] ~= '' then redis.call('HDEL', KEYS[2], f[4]) end
    redis.call('XDEL', KEYS[1], item[1])
  end
end
return {seq, 0}
