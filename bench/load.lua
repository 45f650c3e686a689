-- One request class of `swarmwatch bench load`, sent by wrk at a fixed rate.
--
-- wrk -t1 -cN -dS --timeout T -s load.lua URL -- KIND RATE ARG...
--   KIND healthz|rankings|frames|summary: GET; ARG = study id (ignored by healthz)
--   KIND register: POST /api/v1/torrents; ARG = study id, api key, infohash prefix (24 hex)
-- The schedule is open loop per thread: request i is due at start + i / RATE whatever
-- the answers do, so a slow server shows as a missed rate, not a politely slower client;
-- at most N requests are in flight (one per connection). Prints one line
-- "SWARMWATCH-LOAD {json}" with statuses, cache hits, socket errors and percentiles.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } swarmwatch_timespec;
int clock_gettime(int clock_id, swarmwatch_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("swarmwatch_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

local interval_ms, study, key, prefix
local due = nil
local sent = 0
statuses = {}
hits = 0

function init(args)
  kind = args[1] -- global: done() reads it from a thread

  interval_ms = 1000 / tonumber(args[2])
  study = args[3]
  key = args[4]
  prefix = args[5]
end

function delay()
  local now = now_ms()
  if due == nil then
    due = now
  end
  local wait = due - now
  due = due + interval_ms
  if wait < 0 then
    return 0
  end
  return math.floor(wait + 0.5)
end

local LEVELS = { "city", "metro", "country" }
local METRICS = { "absolute", "per_capita" }

function request()
  sent = sent + 1
  local headers = { ["Accept-Encoding"] = "gzip" }
  if kind == "healthz" then
    return wrk.format("GET", "/healthz", headers)
  elseif kind == "rankings" then
    local level = LEVELS[(sent % #LEVELS) + 1]
    local metric = METRICS[(math.floor(sent / #LEVELS) % #METRICS) + 1]
    return wrk.format(
      "GET",
      "/api/v1/studies/" .. study .. "/rankings?level=" .. level .. "&metric=" .. metric .. "&limit=50",
      headers
    )
  elseif kind == "frames" then
    return wrk.format("GET", "/api/v1/studies/" .. study .. "/frames?interval=3600&res=4", headers)
  elseif kind == "summary" then
    return wrk.format("GET", "/api/v1/studies/" .. study .. "/summary", headers)
  elseif kind == "register" then
    headers["Content-Type"] = "application/json"
    headers["Authorization"] = "Bearer " .. key
    -- Distinct in the run: a per-run random prefix, this thread's number and counter.
    local infohash = prefix .. string.format("%04x%012x", tid, sent)
    local body = '{"study_id": ' .. study .. ', "infohash": "' .. infohash .. '"}'
    return wrk.format("POST", "/api/v1/torrents", headers, body)
  end
  error("unknown request class " .. tostring(kind))
end

function response(status, headers, body)
  local s = tostring(status)
  statuses[s] = (statuses[s] or 0) + 1
  if headers["x-cache"] == "hit" then
    hits = hits + 1
  end
end

local function json_object(t)
  local parts = {}
  for k, v in pairs(t) do
    table.insert(parts, string.format('"%s": %d', k, v))
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
  local all, cache_hits, kind = {}, 0, threads[1]:get("kind")
  for _, thread in ipairs(threads) do
    for s, n in pairs(thread:get("statuses")) do
      all[s] = (all[s] or 0) + n
    end
    cache_hits = cache_hits + thread:get("hits")
  end
  local e = summary.errors
  local p = {}
  for _, q in ipairs({ 50, 95, 99 }) do
    table.insert(p, string.format('"p%d_ms": %.3f', q, latency:percentile(q) / 1000))
  end
  io.write(string.format(
    'SWARMWATCH-LOAD {"kind": "%s", "requests": %d, "duration_s": %.3f, "statuses": %s, '
      .. '"cache_hits": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d, '
      .. '%s, "max_ms": %.3f}\n',
    kind, summary.requests, summary.duration / 1e6, json_object(all), cache_hits,
    e.connect, e.read, e.write, e.timeout, table.concat(p, ", "), latency.max / 1000
  ))
end
