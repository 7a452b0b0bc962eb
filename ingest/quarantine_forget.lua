-- Forget kept deliveries of one provider (released ones), each once.
-- KEYS: the stream, the hash of headers and bodies, the state hash.
-- ARGV: entry ids. Returns how many were still there.
local stream, kept, state = KEYS[1], KEYS[2], KEYS[3]
local gone, freed = 0, 0
for _, id in ipairs(ARGV) do
  local entry = redis.call('XRANGE', stream, id, id)[1]
  if entry then
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'size' then freed = freed + tonumber(fields[i + 1]) end
    end
    redis.call('XDEL', stream, id)
    redis.call('HDEL', kept, id .. ':headers', id .. ':body')
    gone = gone + 1
  end
end
if freed > 0 and redis.call('EXISTS', state) == 1 then
  redis.call('HINCRBY', state, 'bytes', -freed)
end
return gone
