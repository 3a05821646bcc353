-- wrk script for bench/http_bench.sh. Arguments (after --): MODEL LAYERS EXPERTS to cycle GETs over every
-- expert's blob of the model (each request a different expert, so reads hit the device, not one hot extent);
-- no arguments: the URL given to wrk as is. done() prints one machine-readable RESULT line.
local model, layers, experts
local counter = 0

function init(args)
  if #args == 3 then
    model, layers, experts = args[1], tonumber(args[2]), tonumber(args[3])
  end
  -- Threads start at different experts.
  counter = math.random(0, 1000000)
end

function request()
  if model == nil then
    return wrk.format("GET")
  end
  counter = counter + 1
  local i = counter % (layers * experts)
  local path = string.format("/v1/models/%s/experts/%d/%d/blob", model, math.floor(i / experts), i % experts)
  return wrk.format("GET", path)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f bytes=%d " ..
    "connect_errors=%d read_errors=%d write_errors=%d timeouts=%d non_2xx=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, summary.bytes, e.connect, e.read, e.write, e.timeout, e.status))
end
