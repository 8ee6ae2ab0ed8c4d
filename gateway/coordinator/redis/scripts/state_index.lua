-- The tenant's open conversations by state: KEYS[1..3] the sets for bot, queued, assigned (hash tag
-- {s:T}). ARGV[1] the conversation, ARGV[2] its state now: it is in that set and no other (closed:
-- in none). Idempotent, so writing it again after a failure mends it.
local states = {'bot', 'queued', 'assigned'}
for i, state in ipairs(states) do
  if state == ARGV[2] then redis.call('SADD', KEYS[i], ARGV[1]) else redis.call('SREM', KEYS[i], ARGV[1]) end
end
return 1
