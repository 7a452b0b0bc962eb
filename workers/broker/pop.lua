local n = tonumber(ARGV[1])
for i = 1, n do
  local item = redis.call('LINDEX', KEYS[i], -1)
  if item then
    local ok, msg = pcall(cjson.decode, item)
    local props = ok and type(msg) == 'table' and msg['properties']
    local tag = type(props) == 'table' and props['delivery_tag']
    local info = type(props) == 'table' and props['delivery_info']
    if type(tag) ~= 'string' or type(info) ~= 'table' then
      redis.call('LPUSH', KEYS[n + 3], redis.call('RPOP', KEYS[i]))
      return {KEYS[i], false}
    end
    redis.call('ZADD', KEYS[n + 2], ARGV[2], tag)
    redis.call('HSET', KEYS[n + 1], tag,
      '[' .. item .. ',' .. cjson.encode(info['exchange'] or '') .. ','
          .. cjson.encode(info['routing_key'] or '') .. ']')
    redis.call('HSET', KEYS[n + 4], tag, ARGV[3])
    redis.call('HSET', KEYS[n + 5], tag, KEYS[i])
    redis.call('SADD', KEYS[n + 6], ARGV[3])
    redis.call('RPOP', KEYS[i])
    return {KEYS[i], item}
  end
end
return false
