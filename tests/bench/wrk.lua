-- wrk script: cycle through pre-signed requests (tests/bench/deliveries.py), each
-- thread its own slice so no two threads send the same unique delivery; prints one
-- JSON line with the summary. Usage: wrk ... -s wrk.lua <url> -- <request file>

local threads = {}
local counter = 0

-- A monotonic clock in milliseconds (LuaJIT's ffi; wrk is built on LuaJIT), for the
-- rate while every thread sends (below) and for wrk_paced.lua's schedule.
local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } hookfleet_timespec;
int clock_gettime(int clock, hookfleet_timespec *now);
]])
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("hookfleet_timespec")

function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local function split_headers(raw)
  local headers = {}
  for pair in string.gmatch(raw, "[^\31]+") do
    local colon = string.find(pair, ":", 1, true)
    headers[string.sub(pair, 1, colon - 1)] = string.sub(pair, colon + 1)
  end
  return headers
end

function init(args)
  reqs = {}
  local index = 0
  for line in io.lines(args[1]) do
    if index % tonumber(args[2]) == id then
      local t1 = string.find(line, "\t", 1, true)
      local t2 = string.find(line, "\t", t1 + 1, true)
      local path = string.sub(line, 1, t1 - 1)
      local headers = split_headers(string.sub(line, t1 + 1, t2 - 1))
      table.insert(reqs, wrk.format("POST", path, headers, string.sub(line, t2 + 1)))
    end
    index = index + 1
  end
  position = 0
  wrapped = 0
  repeated = 0
  sends = {}
end

function request()
  sends[#sends + 1] = now_ms()
  position = position + 1
  if position > #reqs then
    position = 1
    wrapped = wrapped + 1
  end
  if wrapped > 0 then
    repeated = repeated + 1
  end
  return reqs[position]
end

-- The requests/s sent while every thread was sending: wrk starts each thread as soon
-- as it has read its requests and times the run from when all have, so a thread that
-- read them sooner sends alone for a while (over a second for 30,000 requests on a
-- loaded machine) and wrk's requests/s counts that head start.
local function together_rate()
  local from, to = -math.huge, math.huge
  local stamps = {}
  for _, thread in ipairs(threads) do
    local sent = thread:get("sends") or {}
    if #sent == 0 then
      return 0
    end
    from, to = math.max(from, sent[1]), math.min(to, sent[#sent])
    table.insert(stamps, sent)
  end
  if to <= from then
    return 0
  end
  local n = 0
  for _, sent in ipairs(stamps) do
    for _, at in ipairs(sent) do
      if at >= from and at <= to then
        n = n + 1
      end
    end
  end
  return n * 1000 / (to - from)
end

function done(summary, latency, requests)
  io.write(string.format('{"together_rate": %.1f}\n', together_rate()))
  local wraps, repeats = 0, 0
  for _, thread in ipairs(threads) do
    wraps = math.max(wraps, thread:get("wrapped") or 0)
    repeats = repeats + (thread:get("repeated") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "wrapped": %d, "repeated": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    wraps, repeats))
end
