#!/usr/bin/env bash
# Decode speed of expertstore against llama.cpp on the same GGUF file with the same memory.
#
# The file: a Qwen3-30B-A3B-shaped checkpoint (make-checkpoint --preset qwen3-30b-a3b, random weights, the real
# Qwen3 tokenizer) converted by llama.cpp's converter and quantized by llama_model_quantize (Q4_K_M by default).
# llama.cpp runs it through its own C API (bench/llamacpp_speed.c, built here against the oracle's headers and
# prebuilt libraries), mapped with mmap, twice: with its default of repacking the weights into anonymous memory,
# and with llama-cli's --no-repack, where the weights stay in the mapped file and the kernel pages them in and out.
# expertstore ingests the same file and generates from its store.
#
# The memory: each run is a process in a memory cgroup whose limit counts everything it holds, anonymous memory
# and page cache alike. The limit of a row is B + F% of the experts' bytes, where B is what expertstore holds with
# no expert cached (its dense weights and runtime: measured first, in a cgroup) and F the row's percentage.
# expertstore's expert cache is the limit less B less a margin. Page caches are dropped before every run, so each
# starts cold.
#
# Prints, per row, decode tokens/s (median of --reps runs, the first token excluded on both sides: it is the
# prompt's) of llama.cpp (default; --no-repack), of expertstore exact (fp32 on the decoded blocks) and of
# expertstore with --activations q8 (int8 activations, integer dot products: llama.cpp's arithmetic, not exact),
# and the ratios against llama.cpp's faster run. 0 means the run did not finish (killed by the limit).
#
# Needs root (cgroups, drop_caches), gcc, and the llama.cpp oracle of ../shared/oracles/llamacpp/README.md set up, with
# GGUF_PY and LLAMA_LIB_DIR. About 6 GiB of scratch space per 4 layers while converting.
# Then, with no limit, the warm prefill: a prompt of about --prefill-tokens tokens (the same sentence repeated)
# evaluated a second time in the same process (llama.cpp: its memory cleared, the prompt decoded again;
# expertstore: `generate --warmup`), tokens/s of each side, median of --reps.
# Usage: bench/llamacpp_speed.sh [--layers N] [--type Q4_K_M] [--tokens N] [--reps N] [--percents "none 100 50 25"]
#                                [--prefill-tokens N (0: no prefill table)] [--work DIR] [SHARED_DIR]
#   --percents: the rows; none is no limit at all (expertstore caches every expert).
#   --work DIR keeps the converted file and the store there and reuses them on the next run. BUILD_DIR overrides build/.
# Cold-start figures: with few --tokens most of a run is the first touch of each expert, whatever the memory.
# Run it on an otherwise idle machine: llama.cpp's threads spin while they wait, and other load slows it far more.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}
cli=$build/expertstore
layers=4 type=Q4_K_M tokens=96 reps=3 percents="none 100 50 25" prefill=256 work="" shared=$root/../shared
while [ $# -gt 0 ]; do
  case $1 in
    --layers) layers=$2; shift 2 ;;
    --type) type=$2; shift 2 ;;
    --tokens) tokens=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --percents) percents=$2; shift 2 ;;
    --prefill-tokens) prefill=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    -*) echo "unknown flag $1" >&2; exit 2 ;;
    *) shared=$1; shift ;;
  esac
done
source "$root/bench/bench_lib.sh"
oracle=$shared/oracles/llamacpp
for v in GGUF_PY LLAMA_LIB_DIR; do
  [ -n "${!v:-}" ] || { echo "$v is not set: set up the llama.cpp oracle ($oracle/README.md)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "needs root: memory cgroups and dropping the page cache" >&2; exit 2; }

# Memory cgroups: v1 (memory.limit_in_bytes) or v2 (memory.max).
if [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
  cgroot=/sys/fs/cgroup/memory limit_file=memory.limit_in_bytes peak_file=memory.max_usage_in_bytes
elif [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
  cgroot=/sys/fs/cgroup limit_file=memory.max peak_file=memory.peak
  echo +memory > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
else
  echo "no memory cgroup controller found" >&2; exit 2
fi
cg=$cgroot/expertstore-bench-$$
mkdir "$cg"
if [ -z "$work" ]; then
  work=$(mktemp -d /var/tmp/llamacpp-speed.XXXXXX)
  trap 'rmdir "$cg" 2>/dev/null; rm -rf "$work"' EXIT
else
  mkdir -p "$work"
  trap 'rmdir "$cg" 2>/dev/null' EXIT
fi

# in_cgroup LIMIT_BYTES CMD...: runs CMD alone in the cgroup under that limit (max: none), after dropping the page
# cache; leaves the peak usage in $work/peak.
in_cgroup() {
  local limit=$1
  shift
  sync
  echo 3 > /proc/sys/vm/drop_caches
  [ "$limit" = max ] && limit=$([ "$limit_file" = memory.max ] && echo max || echo -1)
  echo "$limit" > "$cg/$limit_file"
  [ "$peak_file" = memory.max_usage_in_bytes ] && echo 0 > "$cg/$peak_file"
  local rc=0
  sh -c 'echo $$ > "$0/cgroup.procs"; exec "$@"' "$cg" "$@" || rc=$?
  cat "$cg/$peak_file" > "$work/peak" 2>/dev/null || echo 0 > "$work/peak"
  return $rc
}

llama=$work/llamacpp_speed
gcc -O2 -o "$llama" "$root/bench/llamacpp_speed.c" -I"$GGUF_PY/../include" -I"$GGUF_PY/../ggml/include" \
  -L"$LLAMA_LIB_DIR" -l:libllama.v0.4.0.so -l:libggml.v0.4.0.so -l:libggml-base.so -Wl,-rpath,"$LLAMA_LIB_DIR"

gguf=$work/q30-$layers-$type.gguf
if [ ! -s "$gguf" ]; then
  echo "making a $layers-layer Qwen3-30B-A3B-shaped $type GGUF in $work" >&2
  ckpt=$work/checkpoint
  rm -rf "$ckpt"
  "$cli" make-checkpoint "$ckpt" --arch qwen3_moe --preset qwen3-30b-a3b --layers "$layers" --quiet >/dev/null
  cp "$shared/tokenizers/qwen3/tokenizer.json" "$shared/tokenizers/qwen3/tokenizer_config.json" "$ckpt/"
  # The real tokenizer's end-of-text ids, so that neither side stops on a byte token of the random model.
  /usr/bin/python3 - "$ckpt/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["bos_token_id"] = 151643; c["eos_token_id"] = 151645
json.dump(c, open(sys.argv[1], "w"))
PY
  OUT_TYPE=bf16 /usr/bin/python3 "$oracle/hf_to_gguf.py" "$ckpt" "$work/bf16.gguf" >/dev/null
  rm -rf "$ckpt"
  /usr/bin/python3 "$oracle/quantize.py" "$work/bf16.gguf" "$gguf.part" "$type" >/dev/null 2>&1
  rm -f "$work/bf16.gguf"
  mv "$gguf.part" "$gguf"
fi
store=$work/store-$layers-$type
if [ ! -d "$store" ]; then
  "$cli" ingest "$gguf" --name m --store "$store.part" --quiet >/dev/null
  mv "$store.part" "$store"
fi
prompt="The history of the river valley is long and full of stories about farmers, traders and travellers who came"
"$cli" tokenize --model m --store "$store" --text "$prompt" | tr -d '[]' > "$work/ids.txt"

# generate CACHE_FLAG VALUE ACTIVATIONS: the command line of one expertstore run (one JSON line out).
generate() {
  gen=("$cli" generate --model m --store "$store" --prompt "$prompt" --max-tokens "$tokens" --json --no-record
       --threads 2 "$1" "$2" --activations "$3" --quiet)
}
field() { /usr/bin/python3 -c "import json, sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }
# print_medians: the medians of the runs in ll, nr, ex and q8, and ex's and q8's ratios against the faster llama.cpp.
print_medians() {
  /usr/bin/python3 -c "
l, n, e, q = $(es_median "${ll[@]}"), $(es_median "${nr[@]}"), $(es_median "${ex[@]}"), $(es_median "${q8[@]}")
best = max(l, n)
r = lambda a: f'{a / best:.2f}x' if best > 0 else 'n/a'
print(f'{l:>10.2f} {n:>10.2f} {e:>10.2f} {q:>10.2f} {r(e):>12} {r(q):>10}')"
}

# The experts' bytes (the cache's size with all of them) and B.
expert_mib=$("$cli" generate --model m --store "$store" --prompt x --max-tokens 1 --json --no-record --cache-pct 100 \
  --quiet | field configuration | sed -n 's/.*experts (\([0-9.]*\) MiB.*/\1/p')
# The smallest cache it runs with (one layer's experts for one token); B is the peak less that cache.
min_cache_mb=$(( ($(echo "$expert_mib" | cut -d. -f1) * 8 + 128 * layers - 1) / (128 * layers) + 1 ))
generate --cache-mb "$min_cache_mb" exact
in_cgroup max "${gen[@]}" > /dev/null
base=$(( $(cat "$work/peak") - min_cache_mb * 1024 * 1024 ))
mib=$((1024 * 1024))
echo "model: $layers layers of 128 experts, $type, file $(($(stat -c %s "$gguf") / mib)) MiB, experts ${expert_mib} MiB;" \
  "expertstore without experts holds $((base / mib)) MiB"
echo "decode tokens/s, median of $reps, $tokens tokens, 2 threads, cold page cache; ratios against llama.cpp's faster"
printf '%-8s %10s %10s %10s %10s %10s %12s %10s\n' experts% limit_MiB llama.cpp no-repack es_exact es_q8 \
  exact/llama q8/llama
for pct in $percents; do
  if [ "$pct" = none ]; then
    limit=max cache=(--cache-pct 100) shown=none
  else
    limit=$(/usr/bin/python3 -c "print(int($base + $pct / 100 * $expert_mib * $mib))")
    # The cache: the limit less B less 32 MiB of margin (KV cache, buffers), at least the smallest it runs with.
    cache=(--cache-mb "$(/usr/bin/python3 -c "print(max($min_cache_mb, int(($limit - $base) / $mib) - 32))")")
    shown=$((limit / mib))
  fi
  ll=() nr=() ex=() q8=()
  for _ in $(seq "$reps"); do
    for repack in 1 0; do
      if out=$(in_cgroup "$limit" "$llama" "$LLAMA_LIB_DIR" "$gguf" "$tokens" 2 $repack < "$work/ids.txt" 2>/dev/null)
      then
        v=$(echo "$out" | field tokens_per_second)
      else
        v=0
      fi
      if [ $repack = 1 ]; then ll+=("$v"); else nr+=("$v"); fi
    done
    for a in exact q8; do
      generate "${cache[@]}" "$a"
      if out=$(in_cgroup "$limit" "${gen[@]}" 2>/dev/null); then
        v=$(echo "$out" | field tokens_per_second)
      else
        v=0
      fi
      if [ $a = exact ]; then ex+=("$v"); else q8+=("$v"); fi
    done
  done
  printf '%-8s %10s ' "$pct" "$shown"
  print_medians
done

[ "$prefill" -gt 0 ] || exit 0
long=$prompt
while [ "$("$cli" tokenize --model m --store "$store" --text "$long" | tr ',' '\n' | wc -l)" -lt "$prefill" ]; do
  long="$long $prompt"
done
"$cli" tokenize --model m --store "$store" --text "$long" | tr -d '[]' > "$work/long_ids.txt"
n_long=$(tr ',' '\n' < "$work/long_ids.txt" | wc -l)
echo
echo "warm prefill tokens/s, median of $reps, a $n_long-token prompt evaluated a second time, 2 threads, no limit"
printf '%-10s %10s %10s %10s %12s %10s\n' llama.cpp no-repack es_exact es_q8 exact/llama q8/llama
ll=() nr=() ex=() q8=()
for _ in $(seq "$reps"); do
  for repack in 1 0; do
    v=$(in_cgroup max "$llama" "$LLAMA_LIB_DIR" "$gguf" 2 2 $repack < "$work/long_ids.txt" 2>/dev/null |
        field warm_prefill_tokens_per_second) || v=0
    if [ $repack = 1 ]; then ll+=("$v"); else nr+=("$v"); fi
  done
  for a in exact q8; do
    v=$(in_cgroup max "$cli" generate --model m --store "$store" --prompt "$long" --max-tokens 1 --json --no-record \
        --threads 2 --cache-pct 100 --activations "$a" --warmup --quiet 2>/dev/null | field prefill_tokens_per_second) || v=0
    if [ $a = exact ]; then ex+=("$v"); else q8+=("$v"); fi
  done
done
print_medians
