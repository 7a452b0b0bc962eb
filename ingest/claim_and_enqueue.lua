local prior = redis.call('GET', KEYS[1])
if prior then
  if ARGV[5] == '1' then redis.call('SET', KEYS[1], prior, 'KEEPTTL') end
  return prior
end
local limit = tonumber(ARGV[4])
if limit > 0 and redis.call('LLEN', KEYS[2]) >= limit then return 0 end
local bucket, rate, burst, tokens, now = KEYS[3]
if bucket then
  rate, burst = tonumber(ARGV[6]), tonumber(ARGV[7])
  tokens, now = bucket_level(bucket, rate, burst)
  if tokens < 1 then return bucket_wait_ms(tokens, rate) end
end
redis.call('LPUSH', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if bucket then bucket_take(bucket, tokens, now, rate, burst) end
return false
