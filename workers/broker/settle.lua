if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] ~= 'ack' then
  local list = redis.call('HGET', KEYS[4], ARGV[1])
  local entry = redis.call('HGET', KEYS[1], ARGV[1])
  local raw = entry and raw_message(entry)
  if list and raw then
    if ARGV[3] == 'front' then redis.call('RPUSH', list, raw)
    else redis.call('LPUSH', list, raw) end
  end
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
