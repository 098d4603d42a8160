-- wrk script: POST one JSON body, optionally stop after N responses, print a JSON summary.
-- A "__N__" in the body is replaced by a number unique to each request (a cache never hits).
--
--   wrk -t1 -c64 -d10s -s wrk_post.lua URL -- BODY_FILE [AUTHORIZATION] [MAX_RESPONSES]
--
-- The summary is one line starting with "WRK_JSON " so the harness can find it among wrk's
-- own output. Latencies are in microseconds, from wrk's HdrHistogram.

local max_responses = 0
local seen = 0
local numbered = nil  -- the body split around "__N__", when it has one (a number per request)
local count = 0
local run = tostring(os.time())

function init(args)
  local file = assert(io.open(args[1], "rb"), "cannot open the body file")
  wrk.method = "POST"
  wrk.body = file:read("*a")
  file:close()
  local at = string.find(wrk.body, "__N__", 1, true)
  if at ~= nil then
    numbered = {string.sub(wrk.body, 1, at - 1), string.sub(wrk.body, at + 5)}
  else
    request = nil  -- the same body every time: wrk prepares it once
  end
  wrk.headers["Content-Type"] = "application/json"
  if args[2] ~= nil and args[2] ~= "" then
    wrk.headers["Authorization"] = args[2]
  end
  max_responses = tonumber(args[3] or "0") or 0
  if max_responses <= 0 then
    -- Without a cap wrk need not hand each response to Lua (checked right after init).
    response = nil
  end
end

function request()
  count = count + 1
  return wrk.format(nil, nil, nil, numbered[1] .. run .. "-" .. id .. "-" .. count .. numbered[2])
end

function setup(thread)
  thread:set("id", tostring(math.random(1, 1000000000)))
end

function response(status, headers, body)
  seen = seen + 1
  if seen == max_responses then
    -- Stopping this thread is not enough: wrk's main thread sleeps for the whole -d duration
    -- and then reports it as the run time. SIGINT ends that sleep, as Ctrl-C would, so the
    -- summary has the real duration. (popen, not os.execute: system() ignores SIGINT while
    -- it waits.) Run with -t1 so the cap is the total.
    wrk.thread:stop()
    io.popen("kill -INT $PPID"):close()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
