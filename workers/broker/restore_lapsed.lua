local out = {}
for _, owner in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. owner) == 0 then
    local held = ARGV[2] .. owner
    local entries = redis.call('HGETALL', held)
    local counts, order = {}, {}
    for i = 1, #entries, 2 do
      local tag, list = entries[i], entries[i + 1]
      if redis.call('HGET', KEYS[4], tag) == owner then
        local entry = redis.call('HGET', KEYS[2], tag)
        local raw = entry and raw_message(entry)
        if raw then
          redis.call('RPUSH', list, raw)
          if not counts[list] then counts[list] = 0; table.insert(order, list) end
          counts[list] = counts[list] + 1
        end
        redis.call('HDEL', KEYS[2], tag)
        redis.call('ZREM', KEYS[3], tag)
        redis.call('HDEL', KEYS[4], tag)
      end
    end
    redis.call('DEL', held)
    redis.call('SREM', KEYS[1], owner)
    for _, list in ipairs(order) do table.insert(out, {owner, list, counts[list]}) end
  end
end
return out
