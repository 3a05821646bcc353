#!/usr/bin/env bash
# Ingest throughput against the copy baseline, in one run: `cp -r` of a checkpoint plus `sync`, and
# `expertstore ingest` of the same checkpoint into a fresh store, alternating, on the same disk, each from a warm
# source; prints each run, the medians and ingest/copy, and ingest's peak RSS.
# Usage: bench/ingest_bench.sh [-r RUNS] [-d WORKDIR] [CHECKPOINT]
#   Without CHECKPOINT, writes a Qwen3-30B-A3B-shaped one (4 layers, 128 experts of 9 MiB, 6.2 GB) with
#   make-checkpoint into WORKDIR first. WORKDIR (default: a new directory under the current one) must be on the
#   disk to measure; it is removed afterwards unless it held the checkpoint you passed. BUILD_DIR overrides build/.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}
# shellcheck source=bench/bench_lib.sh
source "$root/bench/bench_lib.sh"
runs=5 work=""
while getopts "r:d:" opt; do
  case $opt in
    r) runs=$OPTARG ;; d) work=$OPTARG ;;
    *) echo "usage: $0 [-r RUNS] [-d WORKDIR] [CHECKPOINT]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
cli=$build/expertstore
[ -x "$cli" ] || { echo "missing $cli: build first" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }
made_work=""
if [ -z "$work" ]; then work=$(mktemp -d -p "$PWD" ingest-bench.XXXXXX); made_work=1; fi
mkdir -p "$work"
cleanup() {
  rm -rf "$work/copy" "$work/store" "$work/rss"
  [ -n "${made:-}" ] && rm -rf "$work/checkpoint"
  [ -n "$made_work" ] && rmdir "$work" 2>/dev/null
  true
}
trap cleanup EXIT
src=${1:-}
if [ -z "$src" ]; then
  src=$work/checkpoint
  made=1
  echo "# writing a Qwen3-30B-A3B-shaped checkpoint (4 layers) to $src" >&2
  "$cli" make-checkpoint "$src" --arch qwen3_moe --preset qwen3-30b-a3b --layers 4 --quiet >/dev/null
fi
bytes=$(du -sb "$src" | cut -f1)
cat "$src"/* >/dev/null  # both methods start from a warm source
echo "# $(date -u +%FT%TZ) $(nproc) cores; $src: $bytes bytes; $runs runs"
now() { date +%s.%N; }
copies=() ingests=()
for run in $(seq "$runs"); do
  rm -rf "$work/copy" "$work/store"; sync
  t0=$(now); cp -r "$src" "$work/copy"; sync; t1=$(now)
  /usr/bin/time -f "%M" -o "$work/rss" "$cli" ingest "$src" --name bench --store "$work/store" --quiet >/dev/null
  sync; t2=$(now)
  c=$(echo "$t1 - $t0" | bc -l) i=$(echo "$t2 - $t1" | bc -l)
  copies+=("$c") ingests+=("$i")
  printf 'run %d: cp+sync %.2f s, ingest %.2f s, ratio %.3f, ingest peak RSS %d MB\n' "$run" "$c" "$i" \
    "$(echo "$i / $c" | bc -l)" $(( $(cat "$work/rss") / 1024 ))
done
mc=$(es_median "${copies[@]}") mi=$(es_median "${ingests[@]}")
printf 'median: cp+sync %.2f s (%.0f MB/s), ingest %.2f s (%.0f MB/s), ingest/copy %.3f\n' "$mc" \
  "$(echo "$bytes / $mc / 1000000" | bc -l)" "$mi" "$(echo "$bytes / $mi / 1000000" | bc -l)" "$(echo "$mi / $mc" | bc -l)"
