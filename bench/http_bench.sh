#!/usr/bin/env bash
# HTTP benchmark with wrk on loopback: requests/s and latency percentiles of the query route
# (GET /v1/models/tiny/query?domain=python&top=10 over synthetic trust and profile records), of the expert list
# (GET /v1/models/tiny/experts) and of expert blob
# GETs (every expert of the model in turn, and one hot expert), against `expertstore serve` on a fresh store
# holding the demo model. Fails unless every request got a 2xx and wrk saw no socket errors.
# Usage: bench/http_bench.sh [-d DURATION] [-c CONNECTIONS] [-t THREADS] [-w WARMUP]
#   BUILD_DIR overrides the build directory (default build/); serve's own flags go in SERVE_FLAGS.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}
# shellcheck source=bench/bench_lib.sh
source "$root/bench/bench_lib.sh"
duration=10s connections=64 threads=2 warmup=2s
while getopts "d:c:t:w:" opt; do
  case $opt in
    d) duration=$OPTARG ;; c) connections=$OPTARG ;; t) threads=$OPTARG ;; w) warmup=$OPTARG ;;
    *) echo "usage: $0 [-d DURATION] [-c CONNECTIONS] [-t THREADS] [-w WARMUP]" >&2; exit 2 ;;
  esac
done
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }
for bin in "$build/expertstore" "$build/bench/http_bench_fixture"; do
  [ -x "$bin" ] || { echo "missing $bin: build the expertstore and http_bench_fixture targets" >&2; exit 2; }
done

es_workdir

# No per-connection rate limit: wrk's connections each send as fast as they can.
# shellcheck disable=SC2086
es_serve_demo "$build/expertstore" "$build/bench/http_bench_fixture" "$work" \
  --max-connections $((connections * 2)) ${SERVE_FLAGS:-}

echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); wrk -t$threads -c$connections -d$duration"
failed=0
run() {
  local name=$1; shift
  wrk -t"$threads" -c"$connections" -d"$warmup" -s "$root/bench/http_bench.lua" "$@" >/dev/null
  local out
  out=$(wrk -t"$threads" -c"$connections" -d"$duration" --latency -s "$root/bench/http_bench.lua" "$@")
  local result
  result=$(grep '^RESULT' <<<"$out" | sed 's/^RESULT //')
  printf '%-12s %s\n' "$name" "$result"
  if ! grep -q 'connect_errors=0 read_errors=0 write_errors=0 timeouts=0 non_2xx=0' <<<"$result"; then
    failed=1
  fi
}
run query "$base/v1/models/tiny/query?domain=python&top=10"
run query-layer "$base/v1/models/tiny/query?domain=c&layer=3&top=5"
run experts "$base/v1/models/tiny/experts"
run blob-cycle "$base/" -- tiny 6 32
run blob-hot "$base/v1/models/tiny/experts/3/17/blob"
run healthz "$base/healthz"
exit $failed
