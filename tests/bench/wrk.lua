-- wrk script: cycle through pre-signed requests (tests/bench/deliveries.py), each
-- thread its own slice so no two threads send the same unique delivery; prints one
-- JSON line with the summary. Usage: wrk ... -s wrk.lua <url> -- <request file>

local threads = {}
local counter = 0

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
end

function request()
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

function done(summary, latency, requests)
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
