#!/usr/bin/env bash
# The RADOS tier against the cluster's own tools and against a local store, in one run: a Qwen3-30B-A3B-shaped
# model (random weights, LAYERS layers) is ingested into a local store, published to a pool of a test cluster
# (tools/ceph-cluster.sh, memstore: the pool lives in RAM on this machine) and attached to a second store. Then
#   - publish and attach throughput;
#   - swap-in: `expertstore bench swapin` on the attached model (a layer's batch of k experts through the cache,
#     all in flight) against `rados bench rand` on the same pool with objects of one expert record and the same
#     concurrency k, alternating, REPS times each, medians;
#   - decode: `generate` of the same prompt on the local store, the attached store, and the attached store with a
#     local warm tier of WARM_PCT of the experts' bytes (--local-cache-gb, filled by one untimed run first), all
#     with the same RAM cache (CACHE_PCT of the experts), in turn, REPS times each, medians.
# Usage: bench/rados_bench.sh [-l LAYERS] [-r REPS] [-c CACHE_PCT] [-w WARM_PCT]; BUILD_DIR overrides the build
# directory.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}
# shellcheck source=bench/bench_lib.sh
source "$root/bench/bench_lib.sh"
layers=4 reps=3 cache=10 warm=25
while getopts "l:r:c:w:" opt; do
  case $opt in
    l) layers=$OPTARG ;; r) reps=$OPTARG ;; c) cache=$OPTARG ;; w) warm=$OPTARG ;;
    *) echo "usage: $0 [-l LAYERS] [-r REPS] [-c CACHE_PCT] [-w WARM_PCT]" >&2; exit 2 ;;
  esac
done
es=$build/expertstore
[ -x "$es" ] || { echo "missing $es: build it first" >&2; exit 2; }
command -v rados >/dev/null || { echo "rados is not installed (tools/setup.sh installs ceph-common)" >&2; exit 2; }

es_workdir
stop_cluster() { bash "$root/tools/ceph-cluster.sh" stop "$work/ceph" >/dev/null 2>&1 || true; es_stop_and_clean; }
trap stop_cluster EXIT
json() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p" | head -1; }

# The pool holds the model and rados bench's objects: the model's bytes plus 4 GiB.
"$es" make-checkpoint "$work/ckpt" --arch qwen3_moe --preset qwen3-30b-a3b --layers "$layers" --quiet
"$es" ingest "$work/ckpt" --name q --store "$work/local" --quiet
rm -rf "$work/ckpt"
model_bytes=$(du -sb "$work/local/segments" | cut -f1)
CEPH_MEMSTORE_BYTES=$((model_bytes + (4 << 30))) bash "$root/tools/ceph-cluster.sh" start "$work/ceph" --pool es >/dev/null
export CEPH_CONF=$work/ceph/ceph.conf

echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $layers-layer Qwen3-30B-A3B-shaped model, $(awk -v b="$model_bytes" 'BEGIN {printf "%.2f GB", b / 1e9}'); single-node memstore cluster on loopback"
pub=$("$es" publish --model q --to rados://es/lib --store "$work/local" --json)
pub_bytes=$(echo "$pub" | json bytes_written) pub_s=$(echo "$pub" | json seconds)
start=$(date +%s.%N)
"$es" attach --from rados://es/lib --model q --store "$work/remote" --json >/dev/null
attach_s=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
echo "publish: $(awk -v n="$pub_bytes" -v s="$pub_s" 'BEGIN {printf "%.2f GB in %.1f s, %.0f MB/s", n / 1e9, s, n / 1e6 / s}'); attach: $(printf '%.2f' "$attach_s") s (catalog entries only, no bulk copy)"

# One untimed swap-in run gives the record size and k (the model's top-k).
probe=$("$es" bench swapin --model q --store "$work/remote" --reads 1 --batches 1 --repeat 1 --json)
record=$(echo "$probe" | json record_bytes)
k=$(echo "$probe" | sed -n 's/.*"batch":{"k":\([0-9]*\).*/\1/p')
rados -p es bench 5 write -b "$record" -t "$k" --no-cleanup >/dev/null 2>&1
ours=() theirs=() local_tps=() remote_tps=() warm_tps=()
experts=$("$es" models --store "$work/local" --json | sed -n 's/.*"experts":\([0-9]*\).*/\1/p' | head -1)
expert_bytes=$((experts * record))
warm_gb=$(awk -v b="$expert_bytes" -v p="$warm" 'BEGIN {printf "%.3f", b * p / 100 / 1e9}')
prompt="The history of the expert store begins with a question about memory"
# Fills the warm tier (untimed): the same kind of text as the timed runs.
"$es" generate --model q --store "$work/remote" --local-cache-gb "$warm_gb" --prompt "$prompt, warm-up" --max-tokens 96 \
  --temperature 1 --seed 99 --cache-pct "$cache" --no-record --quiet >/dev/null 2>&1
for r in $(seq "$reps"); do
  sw=$("$es" bench swapin --model q --store "$work/remote" --reads 4 --batches 8 --repeat 1 --k "$k" --json)
  ours+=("$(echo "$sw" | sed -n 's/.*"batch":{"k":[0-9]*,"batches":[0-9]*,"bytes":[0-9]*,"p50_ms":[0-9.e+-]*,"p99_ms":[0-9.e+-]*,"gbps":\([0-9.e+-]*\).*/\1/p')")
  mbs=$(rados -p es bench 5 rand -t "$k" 2>/dev/null | sed -n 's/^Bandwidth (MB\/sec): *\([0-9.]*\).*/\1/p')
  theirs+=("$(awk -v m="$mbs" 'BEGIN {printf "%.3f", m * 1048576 / 1e9}')")
  for s in local remote warm; do
    store=$work/remote extra=()
    [ "$s" = local ] && store=$work/local
    [ "$s" = warm ] && extra=(--local-cache-gb "$warm_gb")
    tps=$("$es" generate --model q --store "$store" "${extra[@]}" --prompt "$prompt, part $r" --max-tokens 48 \
          --temperature 1 --seed "$r" --cache-pct "$cache" --no-record --json 2>/dev/null | json tokens_per_second)
    case $s in local) local_tps+=("$tps") ;; remote) remote_tps+=("$tps") ;; warm) warm_tps+=("$tps") ;; esac
  done
done
rados -p es cleanup >/dev/null 2>&1 || true
round() { for v in "$@"; do printf '%.2f ' "$v"; done; }
o=$(printf '%.3f' "$(es_median "${ours[@]}")") t=$(es_median "${theirs[@]}")
l=$(printf '%.2f' "$(es_median "${local_tps[@]}")") m=$(printf '%.2f' "$(es_median "${remote_tps[@]}")")
wm=$(printf '%.2f' "$(es_median "${warm_tps[@]}")")
ours=($(round "${ours[@]}")) local_tps=($(round "${local_tps[@]}")) remote_tps=($(round "${remote_tps[@]}"))
warm_tps=($(round "${warm_tps[@]}"))
echo
echo "| measure | expertstore | reference | ratio |"
echo "|---|---|---|---|"
echo "| swap-in of a layer's $k experts, GB/s (runs: ${ours[*]} / ${theirs[*]}) | $o | rados bench rand -t $k: $t | $(awk -v a="$o" -v b="$t" 'BEGIN {printf "%.2fx", a / b}') |"
echo "| decode tok/s, RAM cache at $cache% (runs: ${remote_tps[*]} / ${local_tps[*]}) | attached: $m | local store: $l | $(awk -v a="$m" -v b="$l" 'BEGIN {printf "%.2fx", a / b}') |"
echo "| ... with a warm tier of $warm% of the experts, $warm_gb GB (runs: ${warm_tps[*]}) | attached + warm: $wm | local store: $l | $(awk -v a="$wm" -v b="$l" 'BEGIN {printf "%.2fx", a / b}') |"
