#!/usr/bin/env bash
# Compaction against the copy baseline, in one run. A store holds two ingests of one Qwen3-30B-A3B-shaped checkpoint
# and the first is removed, so half of its segment bytes are dead. Each run restores that store from a template
# (not timed), then times, alternating on the same disk:
#   - copy: dd of exactly the live bytes of each segment file (the same files, the same byte count) to a new file,
#     then sync: what moving the live data costs at the disk's sequential speed;
#   - compact: `expertstore compact`, which reads, verifies, rewrites and commits the same live bytes and removes
#     the old segments.
# Prints each run, the medians and compact/copy.
# Usage: bench/compact_bench.sh [-r RUNS] [-d WORKDIR]
#   WORKDIR (default: a new directory under the current one) must be on the disk to measure; it is removed
#   afterwards. BUILD_DIR overrides build/.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}
# shellcheck source=bench/bench_lib.sh
source "$root/bench/bench_lib.sh"
runs=5 work=""
while getopts "r:d:" opt; do
  case $opt in
    r) runs=$OPTARG ;; d) work=$OPTARG ;;
    *) echo "usage: $0 [-r RUNS] [-d WORKDIR]" >&2; exit 2 ;;
  esac
done
cli=$build/expertstore
[ -x "$cli" ] || { echo "missing $cli: build first" >&2; exit 2; }
if [ -z "$work" ]; then work=$(mktemp -d -p "$PWD" compact-bench.XXXXXX); fi
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
echo "# writing a Qwen3-30B-A3B-shaped checkpoint (2 layers of 64 experts of 9 MiB, vocab 16384) and a store" >&2
"$cli" make-checkpoint "$work/checkpoint" --arch qwen3_moe --preset qwen3-30b-a3b --layers 2 --experts 64 \
  --vocab 16384 --quiet >/dev/null
"$cli" ingest "$work/checkpoint" --name old --store "$work/template" --quiet
"$cli" ingest "$work/checkpoint" --name kept --store "$work/template" --quiet
"$cli" rm old --store "$work/template" --quiet
rm -rf "$work/checkpoint"
# Live bytes per segment, as verify reports them: "segment live" lines.
"$cli" verify --json --store "$work/template" |
  grep -o '"segment":[0-9]*,"file_bytes":[0-9]*,"live_bytes":[0-9]*' |
  sed -E 's/"segment":([0-9]*),"file_bytes":[0-9]*,"live_bytes":([0-9]*)/\1 \2/' > "$work/live"
live=$(awk '{s += $2} END {print s}' "$work/live")
total=$(du -sb "$work/template/segments" | cut -f1)
echo "# $(date -u +%FT%TZ) $(nproc) cores; segments $total bytes, live $live bytes; $runs runs"
now() { date +%s.%N; }
copies=() compacts=()
for run in $(seq "$runs"); do
  rm -rf "$work/store" "$work/copy"
  cp -r "$work/template" "$work/store"
  sync
  echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true  # cold reads for both, where allowed
  t0=$(now)
  while read -r id bytes; do
    [ "$bytes" -gt 0 ] || continue
    dd if="$work/store/segments/$(printf '%06d' "$id").seg" of="$work/copy" bs=4M iflag=count_bytes \
      count="$bytes" oflag=append conv=notrunc status=none
  done < "$work/live"
  sync
  t1=$(now)
  echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  t2=$(now)
  "$cli" compact --max-dead-fraction 0 --quiet --store "$work/store"
  sync
  t3=$(now)
  c=$(echo "$t1 - $t0" | bc -l) k=$(echo "$t3 - $t2" | bc -l)
  copies+=("$c") compacts+=("$k")
  printf 'run %d: copy+sync %.2f s, compact %.2f s, ratio %.3f\n' "$run" "$c" "$k" "$(echo "$k / $c" | bc -l)"
done
after=$(du -sb "$work/store/segments" | cut -f1)
mc=$(es_median "${copies[@]}") mk=$(es_median "${compacts[@]}")
printf 'median: copy+sync %.2f s (%.0f MB/s), compact %.2f s (%.0f MB/s of live bytes), compact/copy %.3f\n' "$mc" \
  "$(echo "$live / $mc / 1000000" | bc -l)" "$mk" "$(echo "$live / $mk / 1000000" | bc -l)" "$(echo "$mk / $mc" | bc -l)"
echo "segments after compaction: $after bytes (from $total)"
