-- With the dedup store apart from the broker (no claim_and_enqueue.lua): take a token
-- from bucket KEYS[1] (ARGV: rate, burst). Returns 0 (taken) or the milliseconds until
-- one is there.
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens, now = bucket_level(KEYS[1], rate, burst)
if tokens < 1 then return bucket_wait_ms(tokens, rate) end
bucket_take(KEYS[1], tokens, now, rate, burst)
return 0
