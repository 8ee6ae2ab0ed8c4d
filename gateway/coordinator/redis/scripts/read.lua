-- Read after/before plus the oldest seq kept, as one consistent snapshot.
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
local f = seq + 1
if #first > 0 then f = tonumber(string.match(first[1][1], '^(%d+)')) end
local items
if ARGV[1] == 'after' then
  items = redis.call('XRANGE', KEYS[1], '(' .. ARGV[2] .. '-1', '+', 'COUNT', ARGV[3])
else
  local top = '+'
  if ARGV[2] ~= '' then top = '(' .. ARGV[2] .. '-1' end
  items = redis.call('XREVRANGE', KEYS[1], top, '-', 'COUNT', ARGV[3])
end
return {f, seq, items}
