#!/usr/bin/env bash
# Continuous batching through `expertstore serve`, as clients meet it: for S concurrent streams (1 2 4 8 by
# default), S streamed completions with distinct prompts and the same max_tokens start together; the table gives
# the aggregate decode tokens/s (all tokens generated over the wall time of the slowest stream), the expert bytes
# the cache read per generated token (the server's /metrics, before and after), and the p50/p99 time to first
# token of the S streams (curl's time to the first byte of the event stream, which the first token's text opens).
# Then the time to first token of a short request (a few prompt tokens, streamed) alone, and while the largest S
# long streams decode: each measured REPS times in a row, p50 and p99, and their ratio.
# The ratios (against S = 1 and against the unloaded short request) come from one run of one server.
# Usage: bench/batching_bench.sh [-s "1 2 4 8"] [-n TOKENS] [-r REPS]
#   EXPERTSTORE_BENCH_STORE / EXPERTSTORE_BENCH_MODEL: a store and model to serve (default: the demo model in a
#   fresh store); SERVE_FLAGS: serve's own flags (the cache size: --cache-pct 25, say); BUILD_DIR: the build.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}
# shellcheck source=bench/bench_lib.sh
source "$root/bench/bench_lib.sh"
streams="1 2 4 8" tokens=64 reps=20
while getopts "s:n:r:" opt; do
  case $opt in
    s) streams=$OPTARG ;; n) tokens=$OPTARG ;; r) reps=$OPTARG ;;
    *) echo "usage: $0 [-s \"1 2 4 8\"] [-n TOKENS] [-r REPS]" >&2; exit 2 ;;
  esac
done
command -v curl >/dev/null || { echo "curl is not installed" >&2; exit 2; }
[ -x "$build/expertstore" ] || { echo "missing $build/expertstore: build it first" >&2; exit 2; }

es_workdir

model=${EXPERTSTORE_BENCH_MODEL:-tiny}
if [ -n "${EXPERTSTORE_BENCH_STORE:-}" ]; then
  store=$EXPERTSTORE_BENCH_STORE
else
  store=$work/store
  "$build/expertstore" ingest "$root/models/tiny-qwen3-moe" --name tiny --store "$store" --quiet >/dev/null
fi
# The largest S must fit the batch: --parallel at least that, unless SERVE_FLAGS says otherwise.
max_streams=$(printf '%s\n' $streams | sort -n | tail -1)
# shellcheck disable=SC2086
"$build/expertstore" serve --store "$store" --port 0 --json --quiet --rate 0 --no-record \
  --parallel $((max_streams * 2)) --max-queued-per-client 64 ${SERVE_FLAGS:-} >"$work/serve.json" &
server_pid=$!
for _ in $(seq 600); do [ -s "$work/serve.json" ] && break; sleep 0.1; done
port=$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' "$work/serve.json")
[ -n "$port" ] || { echo "the server did not start" >&2; exit 1; }
base=http://127.0.0.1:$port

bytes_read() {
  curl -s "$base/metrics" | awk -v m="$model" '$1 == "expertstore_cache_bytes_read_total{model=\"" m "\"}" {print $2}' |
    awk '{s += $1} END {printf "%.0f\n", s}'
}
# A distinct prompt per stream and repetition, so that no stream replays another's routing.
words=(river engine garden protocol violin harbor matrix lantern glacier compiler orchard satellite)
prompt() { echo "Write about the ${words[$(($1 % 12))]} and the ${words[$((($1 * 7 + 3) % 12))]}, part $1:"; }
# stream N ID MAX_TOKENS: one streamed completion; writes "ttft total completion_tokens" to $work/ID.
stream() {
  local body
  body="{\"model\":\"$model\",\"prompt\":\"$(prompt "$1")\",\"max_tokens\":$3,\"temperature\":0.8,\"seed\":$1,
         \"stream\":true,\"stream_options\":{\"include_usage\":true}}"
  curl -sN -o "$work/$2.sse" -w '%{time_starttransfer} %{time_total}\n' -H 'content-type: application/json' \
    -d "$body" "$base/v1/completions" >"$work/$2.time"
  local n
  n=$(sed -n 's/.*"completion_tokens":\([0-9]*\).*/\1/p' "$work/$2.sse" | tail -1)
  [ -n "$n" ] || { echo "stream $2 failed: $(head -c 300 "$work/$2.sse")" >&2; return 1; }
  echo "$(cat "$work/$2.time") $n" >"$work/$2"
}
percentile() {  # percentile P V...: the nearest-rank percentile
  local p=$1
  shift
  printf '%s\n' "$@" | sort -g | awk -v p="$p" '{v[NR] = $1} END {i = int((p * NR + 99) / 100); if (i < 1) i = 1; print v[i]}'
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); model $model, $tokens tokens a stream, serve ${SERVE_FLAGS:-}"
stream 9999 warm "$tokens" >/dev/null  # loads the model and brings the cache to its steady state; not timed
echo "| streams | aggregate tok/s | vs 1 stream | expert MiB read / token | vs 1 stream | TTFT p50 s | TTFT p99 s |"
echo "|---|---|---|---|---|---|---|"
seq_id=0 base_rate="" base_bytes=""
for s in $streams; do
  before=$(bytes_read)
  start=$(date +%s.%N)
  pids=()
  for i in $(seq "$s"); do
    seq_id=$((seq_id + 1))
    stream "$seq_id" "s${s}_$i" "$tokens" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  end=$(date +%s.%N)
  after=$(bytes_read)
  total=0 ttfts=()
  for i in $(seq "$s"); do
    read -r ttft _ n <"$work/s${s}_$i"
    total=$((total + n))
    ttfts+=("$ttft")
  done
  rate=$(awk -v n="$total" -v a="$start" -v b="$end" 'BEGIN {printf "%.2f", n / (b - a)}')
  mib=$(awk -v d="$((after - before))" -v n="$total" 'BEGIN {printf "%.2f", d / 1048576 / n}')
  [ -n "$base_rate" ] || { base_rate=$rate; base_bytes=$mib; }
  echo "| $s | $rate | $(awk -v a="$rate" -v b="$base_rate" 'BEGIN {printf "%.2fx", a / b}') | $mib |" \
       "$(awk -v a="$mib" -v b="$base_bytes" 'BEGIN {printf "%.2fx fewer", (a > 0 ? b / a : 0)}') |" \
       "$(percentile 50 "${ttfts[@]}") | $(percentile 99 "${ttfts[@]}") |"
done

# The short request: alone, then under the largest S long streams; each repetition its own prompt of a few
# tokens (a repeated prompt would find its experts cached by the one before).
short() {
  local body
  body="{\"model\":\"$model\",\"prompt\":\"${words[$(($1 % 12))]} $1\",\"max_tokens\":2,\"temperature\":0,\"stream\":true}"
  curl -sN -o /dev/null -w '%{time_starttransfer}\n' -H 'content-type: application/json' -d "$body" "$base/v1/completions"
}
alone=()
for r in $(seq "$reps"); do alone+=("$(short "$r")"); done
pids=()
for i in $(seq "$max_streams"); do
  seq_id=$((seq_id + 1))
  stream "$seq_id" "load_$i" $((tokens * 4)) &
  pids+=($!)
done
# Until every long stream has its first token: past their prefill, decoding.
for _ in $(seq 600); do
  started=0
  for i in $(seq "$max_streams"); do grep -q '"text"' "$work/load_$i.sse" 2>/dev/null && started=$((started + 1)); done
  [ "$started" -eq "$max_streams" ] && break
  sleep 0.1
done
loaded=()
for r in $(seq "$reps"); do loaded+=("$(short "$((r + reps))")"); done
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
a50=$(percentile 50 "${alone[@]}") a99=$(percentile 99 "${alone[@]}")
l50=$(percentile 50 "${loaded[@]}") l99=$(percentile 99 "${loaded[@]}")
echo
echo "| short request TTFT ($reps in a row) | p50 s | p99 s |"
echo "|---|---|---|"
echo "| alone | $a50 | $a99 |"
echo "| under $max_streams long streams | $l50 | $l99 |"
echo "| ratio | $(awk -v a="$l50" -v b="$a50" 'BEGIN {printf "%.2fx", a / b}') | $(awk -v a="$l99" -v b="$a99" 'BEGIN {printf "%.2fx", a / b}') |"
