local prior = redis.call('GET', KEYS[1])
if prior then
  if ARGV[5] == '1' then redis.call('SET', KEYS[1], prior, 'KEEPTTL') end
  return prior
end
local limit = tonumber(ARGV[4])
if limit > 0 and redis.call('LLEN', KEYS[2]) >= limit then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
