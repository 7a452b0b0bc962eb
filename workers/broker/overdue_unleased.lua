local out = {}
local tags = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[3])
for _, tag in ipairs(tags) do
  local owner = redis.call('HGET', KEYS[2], tag)
  if not owner or redis.call('EXISTS', ARGV[2] .. owner) == 0 then
    table.insert(out, tag)
  end
end
return out
