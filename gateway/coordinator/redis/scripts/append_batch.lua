-- Group commit: the appends of one loop turn whose keys share a slot, in order, in one call.
-- KEYS: log, ids, meta of each append (3 per append). ARGV: keep, then the client id, body and
-- expected state version ('' for none) of each. Each append: unless the conversation's state has
-- moved past the expected version, dedup by client id, next seq, XADD with the seq as the id, trim
-- with the client ids. Returns seq, dup, hv of each append, flat; seq -1 and the current version
-- when the state had moved (nothing appended). hv is the conversation's holders version (meta
-- `hv`, bumped by a node that takes a participant: holders.py): the node's cached holders of the
-- conversation are good for this entry only if they were read at that version or later.
-- An append that fails (a Redis error) answers seq -2 and leaves the others' answers alone: a
-- script is not rolled back, so the appends before it are stored and must be acked.
local keep = tonumber(ARGV[1])
local out = {}

local function append(log, ids, meta, cid, body, ev)
  local seq, dup = nil, 0
  local m = redis.call('HMGET', meta, 'ver', 'hv')
  local hv = tonumber(m[2] or '0')
  if ev ~= '' then
    local v = m[1] or '0'
    if v ~= ev then seq, dup = -1, tonumber(v) end
  end
  if not seq and cid ~= '' then
    local s = redis.call('HGET', ids, cid)
    if s then seq, dup = tonumber(s), 1 end
  end
  if not seq then
    seq = redis.call('HINCRBY', meta, 'seq', 1)
    redis.call('XADD', log, seq .. '-1', 'e', body, 'c', cid)
    if cid ~= '' then redis.call('HSET', ids, cid, seq) end
    local n = redis.call('XLEN', log)
    if n > keep then
      local old = redis.call('XRANGE', log, '-', '+', 'COUNT', n - keep)
      for _, item in ipairs(old) do
        local f = item[2]
        if f[4] ~= '' then redis.call('HDEL', ids, f[4]) end
        redis.call('XDEL', log, item[1])
      end
    end
  end
  return seq, dup, hv
end

for i = 0, #KEYS / 3 - 1 do
  local ok, seq, dup, hv = pcall(append, KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3],
                                 ARGV[3 * i + 2], ARGV[3 * i + 3], ARGV[3 * i + 4])
  if not ok then seq, dup, hv = -2, 0, 0 end
  out[#out + 1] = seq
  out[#out + 1] = dup
  out[#out + 1] = hv
end
return out
