if redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
if ARGV[2] == '1' then redis.call('LPUSH', KEYS[1], ARGV[1]) else redis.call('RPUSH', KEYS[1], ARGV[1]) end
return 1
