-- A write on the conversation's slot, so that a WAITAOF after it covers every write before it
-- (redis_ack = "aof": a retry answered from the stored client ids, docs/cluster.md step 2d).
-- KEYS: meta. Only on a conversation that still exists (an erased one must not come back).
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HINCRBY', KEYS[1], 'w', 1) end
return 0
