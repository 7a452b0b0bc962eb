-- Keep one refused delivery of one provider, within that provider's caps, in one step.
-- KEYS: the stream of entries, the hash of their headers and bodies, the state hash
-- (bytes kept; the rate window's second and count).
-- ARGV: max deliveries, max bytes, age limit (ms), rate (per second), then the entry:
-- reason, arrived (unix s), correlation id, headers (JSON), body ('' when not kept),
-- body bytes (as received), body kept ('1'/'0'), size (bytes it counts against the cap).
-- Returns {'kept', id, evicted for count, evicted for bytes, expired} or
-- {'dropped', cause} (cause: 'rate', 'count' or 'bytes').
local stream, kept, state = KEYS[1], KEYS[2], KEYS[3]
local max_n, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[2])
local age_ms, rate = tonumber(ARGV[3]), tonumber(ARGV[4])
local size = tonumber(ARGV[12])
local ttl_s = math.ceil(age_ms / 1000)

-- Redis's own clock: stream ids are made from it, so age is judged by it too.
local now = redis.call('TIME')
local now_s = tonumber(now[1])
local now_ms = now_s * 1000 + math.floor(tonumber(now[2]) / 1000)

-- The rate cap: a count per whole second.
local window = redis.call('HMGET', state, 'second', 'taken')
local taken = 0
if tonumber(window[1]) == now_s then taken = tonumber(window[2]) or 0 end
if taken >= rate then return {'dropped', 'rate'} end
redis.call('HSET', state, 'second', now_s, 'taken', taken + 1)
redis.call('EXPIRE', state, ttl_s)
if size > max_bytes then return {'dropped', 'bytes'} end

-- Make room: the oldest go first (too old, then past the count, then past the bytes).
-- At most 64 per call, so a lowered cap costs a few calls, never one long script.
local bytes = tonumber(redis.call('HGET', state, 'bytes') or '0')
local count = redis.call('XLEN', stream)
-- The stream expired on its own (nothing kept for the age limit): nothing is held.
if count == 0 then bytes = 0 end
local oldest_allowed = now_ms - age_ms
local evicted = {count = 0, bytes = 0, expired = 0}
local budget = 64
while count > 0 and budget > 0 do
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  local id = first[1]
  local cause
  if tonumber(string.match(id, '^(%d+)')) < oldest_allowed then cause = 'expired'
  elseif count >= max_n then cause = 'count'
  elseif bytes + size > max_bytes then cause = 'bytes'
  else break end
  local fields, entry_size = first[2], 0
  for i = 1, #fields, 2 do
    if fields[i] == 'size' then entry_size = tonumber(fields[i + 1]) end
  end
  redis.call('XDEL', stream, id)
  redis.call('HDEL', kept, id .. ':headers', id .. ':body')
  bytes = bytes - entry_size
  count = count - 1
  budget = budget - 1
  evicted[cause] = evicted[cause] + 1
end
if count >= max_n then return {'dropped', 'count'} end
if bytes + size > max_bytes then return {'dropped', 'bytes'} end

local id = redis.call(
  'XADD', stream, '*',
  'arrived', ARGV[6], 'reason', ARGV[5], 'correlation_id', ARGV[7],
  'body_bytes', ARGV[10], 'body_kept', ARGV[11], 'size', size)
redis.call('HSET', kept, id .. ':headers', ARGV[8], id .. ':body', ARGV[9])
redis.call('HSET', state, 'bytes', bytes + size)
-- Untouched for the age limit, every entry is past it: the keys go by themselves.
redis.call('EXPIRE', stream, ttl_s)
redis.call('EXPIRE', kept, ttl_s)
redis.call('EXPIRE', state, ttl_s)
return {'kept', id, evicted.count, evicted.bytes, evicted.expired}
