#!/usr/bin/env bash
# Soak of `expertstore serve`: for MINUTES, two wrk processes load the metadata routes (one the query route, one
# expert blobs, every expert in turn) while a client streams completions back to back; the server's resident
# memory is sampled every 10 s.
# Passes when every request got a 2xx, wrk saw no socket errors, every completion stream ended with [DONE], and the
# resident memory at the end is within 5% of its value after the first minute. Prints the memory curve.
# Usage: bench/soak.sh [-d MINUTES] [-c CONNECTIONS]
#   BUILD_DIR overrides the build directory (default build/).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}
# shellcheck source=bench/bench_lib.sh
source "$root/bench/bench_lib.sh"
minutes=10 connections=16
while getopts "d:c:" opt; do
  case $opt in
    d) minutes=$OPTARG ;; c) connections=$OPTARG ;;
    *) echo "usage: $0 [-d MINUTES] [-c CONNECTIONS]" >&2; exit 2 ;;
  esac
done
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }
command -v curl >/dev/null || { echo "curl is not installed (apt-get install curl)" >&2; exit 2; }
for bin in "$build/expertstore" "$build/bench/http_bench_fixture"; do
  [ -x "$bin" ] || { echo "missing $bin: build the expertstore and http_bench_fixture targets" >&2; exit 2; }
done

work=$(mktemp -d)
server_pid="" streamer_pid=""
cleanup() {
  [ -n "$streamer_pid" ] && kill "$streamer_pid" 2>/dev/null || true
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

es_serve_demo "$build/expertstore" "$build/bench/http_bench_fixture" "$work" --max-connections $((connections * 4))
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$server_pid/status"; }

# Completions, streamed one after another; each must end with [DONE].
(
  ok=0 bad=0
  while :; do
    if curl -sN --max-time 60 "$base/v1/completions" -H 'Content-Type: application/json' \
      -d '{"model":"tiny","prompt":"def main(","max_tokens":48,"temperature":0.7,"stream":true}' |
      grep -q '^data: \[DONE\]'; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
    echo "$ok $bad" > "$work/streams"
  done
) &
streamer_pid=$!

echo "# $(date -u +%FT%TZ) $(nproc) cores; $minutes min; two wrk -t1 -c$connections (query, blobs); completions streamed"
echo "# minute  rss_mb  round  (from /metrics, MB: the catalog's block cache, memtables, table readers; the allocator's heap in use, free)"
failed=0 rss_minute1=""
(
  while kill -0 "$server_pid" 2>/dev/null; do echo "$(date +%s) $(rss_kb)" >> "$work/rss"; sleep 10; done
) &
sampler_pid=$!
for minute in $(seq "$minutes"); do
  wrk -t1 -c"$connections" -d60s -s "$root/bench/http_bench.lua" "$base/v1/models/tiny/query?domain=python&top=10" \
    > "$work/query.out" &
  query_pid=$!
  wrk -t1 -c"$connections" -d60s -s "$root/bench/http_bench.lua" "$base/" -- tiny 6 32 > "$work/blobs.out"
  wait $query_pid
  rss=$(rss_kb)
  [ -z "$rss_minute1" ] && rss_minute1=$rss
  catalog=$(curl -s "$base/metrics" | awk '/^expertstore_(catalog_memory|heap)_bytes/ {
      name = $1; sub(/"}$/, "", name); sub(/.*="/, "", name)                      # the last label value
      if (match($1, /allocator="[a-z]+"/)) name = substr($1, RSTART + 11, RLENGTH - 12) "_" name
      printf "%s=%.1f ", name, $2 / 1048576 }')
  echo "# minute $minute MB: $catalog"
  for round in query blobs; do
    result=$(grep '^RESULT' "$work/$round.out" | sed 's/^RESULT //')
    grep -q 'connect_errors=0 read_errors=0 write_errors=0 timeouts=0 non_2xx=0' <<<"$result" || failed=1
    printf '%7d  %6.1f  %-5s %s\n' "$minute" "$(echo "$rss / 1024" | bc -l)" "$round" "$result"
  done
done
kill "$sampler_pid" 2>/dev/null || true
kill "$streamer_pid" 2>/dev/null || true
wait "$streamer_pid" 2>/dev/null || true
streamer_pid=""
read -r streams_ok streams_bad < "$work/streams"
rss_end=$(rss_kb)
growth=$(echo "($rss_end - $rss_minute1) * 100 / $rss_minute1" | bc -l)
echo "# rss every 10 s (MB): $(awk '{printf "%.1f ", $2 / 1024}' "$work/rss")"
printf 'completions streamed: %d ok, %d failed; rss after minute 1 %.1f MB, at the end %.1f MB (%+.2f%%)\n' \
  "$streams_ok" "$streams_bad" "$(echo "$rss_minute1 / 1024" | bc -l)" "$(echo "$rss_end / 1024" | bc -l)" "$growth"
[ "$streams_bad" -eq 0 ] || failed=1
if [ "$(echo "$growth > 5 || $growth < -5" | bc -l)" -eq 1 ]; then failed=1; fi
[ $failed -eq 0 ] && echo "soak: ok" || { echo "soak: FAILED" >&2; exit 1; }
