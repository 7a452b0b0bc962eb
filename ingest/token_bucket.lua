-- A token bucket per sender, kept in Redis as one small hash {tokens, at} (at: Redis's
-- own clock, TIME, in microseconds, so every receiver host reads the same clock) that
-- expires once it would be full again: a missing bucket is a full one. rate: tokens per
-- second, burst: the bucket's size (at least 1). Prepended to the scripts that use it.

-- The tokens in the bucket now, and now; writes nothing.
local function bucket_level(key, rate, burst)
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens, at = tonumber(state[1]), tonumber(state[2])
  if not tokens or not at then return burst, now end
  -- A clock that went back (a failover to a server behind) refills nothing.
  local elapsed = math.max(0, now - at)
  return math.min(burst, tokens + elapsed * rate / 1000000), now
end

-- Milliseconds until a bucket holding fewer than one token holds one (at least 1).
local function bucket_wait_ms(tokens, rate)
  return math.max(1, math.ceil((1 - tokens) * 1000 / rate))
end

-- Take one token from a bucket that holds at least one.
local function bucket_take(key, tokens, now, rate, burst)
  local left = tokens - 1
  redis.call('HSET', key, 'tokens', left, 'at', now)
  redis.call('PEXPIRE', key, math.ceil((burst - left) * 1000 / rate) + 1000)
end
