-- Group commit: the appends of one loop turn whose keys share a slot, in order, in one call.
-- KEYS: log, ids, meta of each append (3 per append). ARGV: keep, touch ('1' or ''), then the
-- client id, body and expected state version ('' for none) of each. With touch the batch always
-- writes (meta `w`), so a WAITAOF after it covers every write before it, a duplicate's first
-- append among them (docs/cluster.md, step 2d). Each append: unless the conversation's state has
-- moved past the expected version, dedup by client id, next seq, XADD with the seq as the id, trim
-- with the client ids. Returns seq, dup, hv of each append, flat; seq -1 and the current version
-- when the state had moved (nothing appended). hv is the conversation's holders version (meta
-- `hv`, bumped by a node that takes a participant: holders.py): the node's cached holders of the
-- conversation are good for this entry only if they were read at that version or later.
-- An append that fails (a Redis error) answers seq -2 and leaves the others' answers alone: a
-- script is not rolled back, so the appends before it are stored and must be acked.
-- Four calls for a new message (HMGET, HSETNX, XADD, HSET): meta keeps `seq` and `first` (the
-- oldest seq the stream holds), so the length is arithmetic, not XLEN.
local keep = tonumber(ARGV[1])
local out = {}

local function append(log, ids, meta, cid, body, ev)
  local m = redis.call('HMGET', meta, 'ver', 'hv', 'seq', 'first')
  local hv = tonumber(m[2] or '0')
  if ev ~= '' and (m[1] or '0') ~= ev then return -1, tonumber(m[1] or '0'), hv end
  local seq = tonumber(m[3] or '0') + 1
  if cid ~= '' and redis.call('HSETNX', ids, cid, seq) == 0 then
    return tonumber(redis.call('HGET', ids, cid)), 1, hv
  end
  local added = redis.pcall('XADD', log, seq .. '-1', 'e', body, 'c', cid)
  if type(added) == 'table' and added.err then  -- not stored: the client id must not claim it
    if cid ~= '' then redis.call('HDEL', ids, cid) end
    error(added.err)
  end
  local first = tonumber(m[4] or '0')
  if first == 0 then  -- a log written before `first` was kept: where does the stream start?
    local head = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
    first = tonumber(string.match(head[1][1], '^(%d+)'))
  end
  local over = seq - first + 1 - keep
  if keep > 0 and over > 0 then  -- keep 0: an archiver trims what it has copied (archiver.py)
    for _, item in ipairs(redis.call('XRANGE', log, '-', '+', 'COUNT', over)) do
      local f = item[2]
      if f[4] ~= '' then redis.call('HDEL', ids, f[4]) end
      redis.call('XDEL', log, item[1])
    end
    first = first + over
  end
  redis.call('HSET', meta, 'seq', seq, 'first', first)
  return seq, 0, hv
end

for i = 0, #KEYS / 3 - 1 do
  local ok, seq, dup, hv = pcall(append, KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3],
                                 ARGV[3 * i + 3], ARGV[3 * i + 4], ARGV[3 * i + 5])
  if not ok then seq, dup, hv = -2, 0, 0 end
  out[#out + 1] = seq
  out[#out + 1] = dup
  out[#out + 1] = hv
end
-- Only on a conversation that still exists: a stale append to an erased or expired one must not
-- bring its meta back.
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then redis.pcall('HINCRBY', KEYS[3], 'w', 1) end
return out
