-- wrk script: tests/bench/wrk.lua (the same pre-signed requests, one slice per thread
-- so every delivery is unique) paced to a fixed rate by wrk's delay() hook.
-- Usage: wrk -t<threads> ... -s wrk_paced.lua <url> -- <request file> <threads> <rate/s>
--
-- wrk calls delay() on a connection before each request (its first too) and waits the
-- milliseconds it returns. Each thread keeps a schedule (wrk.lua's now_ms, a monotonic
-- clock): its k-th request is due at (its first delay() call) + k * threads * 1000 /
-- rate ms, and goes out on the next connection that is free, when due (so a slow answer
-- does not slow the schedule, as a fixed pause after each answer would). A request sent after its due time (its
-- connection came free late, or wrk was not run in time) went out late: that lag is
-- recorded, as the Python generator records its own (tests/bench/load.py
-- generate_paced). wrk's latency is from the send, so the caller reads it with the lag
-- and with the rate reached.

local here = string.match(debug.getinfo(1, "S").source, "^@(.*/)") or "./"
dofile(here .. "wrk.lua")

local load_requests = init
local next_request = request
local summarize = done

function init(args)
  load_requests(args)
  interval = tonumber(args[2]) * 1000 / tonumber(args[3])
  first = nil
  scheduled = 0
  -- Due times handed out by delay(), in order; dues[sent] is the latest one sent.
  dues, sent, last_sent = {}, 0, nil
  lags = {}
end

function delay()
  local now = now_ms()
  if first == nil then
    first = now
  end
  local due = first + scheduled * interval
  scheduled = scheduled + 1
  table.insert(dues, due)
  -- wrk's timer counts whole milliseconds: the nearest one, so no send is more than
  -- half a millisecond early and the schedule itself never drifts.
  return math.max(0, math.floor(due - now + 0.5))
end

function request()
  -- Called just before the send: the send's lag is now minus the earliest due time
  -- handed out (a connection that came free late, or wrk itself not run in time).
  -- Every request passed delay() first; the check only guards the count.
  if sent < #dues then
    sent = sent + 1
    last_sent = now_ms()
    table.insert(lags, math.max(0, last_sent - dues[sent]))
  end
  return next_request()
end

local threads = {}
local number_thread = setup

function setup(thread)
  number_thread(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  -- The rate sent, each thread's over its own schedule: wrk starts a thread as soon
  -- as it has read its requests and times the run from when all have, so its own
  -- requests/s counts the first thread's head start (~10 % too many in a 3 s run).
  local all, rate = {}, 0
  for _, thread in ipairs(threads) do
    local sent, first, last_sent = thread:get("sent"), thread:get("first"), thread:get("last_sent")
    if first and last_sent and last_sent > first then
      rate = rate + (sent - 1) * 1000 / (last_sent - first)
    end
    for _, lag in ipairs(thread:get("lags") or {}) do
      table.insert(all, lag)
    end
  end
  table.sort(all)
  local function pct(p)
    if #all == 0 then
      return 0
    end
    return all[math.min(#all, math.floor(#all * p / 100) + 1)]
  end
  -- wrk.lua's summary line, then the pacing's own.
  summarize(summary, latency, requests)
  io.write(string.format(
    '{"paced": %d, "rate": %.1f, "lag_p50_us": %d, "lag_p99_us": %d, "lag_max_us": %d}\n',
    #all, rate, pct(50) * 1000, pct(99) * 1000, (all[#all] or 0) * 1000))
end
