-- Push a replay run's next messages onto a queue, each once, and remember how far the
-- run got, in one atomic step (see replay_push.py).
-- KEYS[1]: the run's marker (highest webhook_events.id pushed); KEYS[2]: the queue.
-- ARGV[1]: the marker's TTL in seconds; then id, message pairs. Returns how many it pushed.
local done = tonumber(redis.call('GET', KEYS[1]) or '0')
local highest = done
local pushed = 0
for i = 2, #ARGV, 2 do
  local id = tonumber(ARGV[i])
  if id > done then
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    pushed = pushed + 1
    if id > highest then highest = id end
  end
end
-- After the pushes: a script cut short before this line can leave a message without
-- its mark (sent again on resume: a duplicate), never a mark without its message.
redis.call('SET', KEYS[1], highest, 'EX', ARGV[1])
return pushed
