local tails = {}
for i, value in ipairs(redis.call('HVALS', KEYS[1])) do
  tails[i] = string.sub(value, -200)
end
return tails
