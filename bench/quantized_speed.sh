#!/usr/bin/env bash
# Decode speed of a quantized model against its bf16 original with the same expert cache bytes.
#
# The models: a Qwen3-30B-A3B-shaped checkpoint (make-checkpoint --preset qwen3-30b-a3b, --layers, default 12;
# random weights, the real Qwen3 tokenizer) ingested as it is (bf16 safetensors), and the same checkpoint converted
# by llama.cpp's converter and quantized by llama_model_quantize (--type, default Q4_K_M), ingested from the GGUF.
# Both run `generate` greedily with an expert cache of --cache-pct (default 25) percent of the bf16 experts' bytes:
# the quantized store fits about 3.5 times as many experts in it, and each miss reads a quarter of the bytes.
# The quantized model runs exact (fp32 on the decoded blocks) and with --activations q8.
#
# Prints, per model, decode tokens/s (median of --reps runs, page cache dropped before each when root), the cache's
# hit rate and MiB read per decoded token, and the ratios against bf16. Then, with every expert cached (no
# limit), the quantized model's decode against the machine's memory bandwidth: the bytes a token touches (the
# dense weights it reads, the lm_head included, plus k experts per layer) over the decode time, as a fraction of
# what `kernels_bench`'s BM_MemoryRead measures with the same threads.
#
# Needs the llama.cpp oracle of ../shared/oracles/llamacpp/README.md (GGUF_PY) and about 3.5 GiB of scratch space
# per layer while converting. --work DIR keeps the stores and reuses them.
# Usage: bench/quantized_speed.sh [--layers N] [--type Q4_K_M] [--cache-pct P] [--tokens N] [--reps N] [--work DIR]
#                                 [SHARED_DIR]        BUILD_DIR overrides build/.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}
cli=$build/expertstore
layers=12 type=Q4_K_M pct=25 tokens=64 reps=3 work="" shared=$root/../shared
while [ $# -gt 0 ]; do
  case $1 in
    --layers) layers=$2; shift 2 ;;
    --type) type=$2; shift 2 ;;
    --cache-pct) pct=$2; shift 2 ;;
    --tokens) tokens=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    -*) echo "unknown flag $1" >&2; exit 2 ;;
    *) shared=$1; shift ;;
  esac
done
source "$root/bench/bench_lib.sh"
oracle=$shared/oracles/llamacpp
[ -n "${GGUF_PY:-}" ] || { echo "GGUF_PY is not set: set up the llama.cpp oracle ($oracle/README.md)" >&2; exit 2; }
if [ -z "$work" ]; then
  work=$(mktemp -d /var/tmp/quantized-speed.XXXXXX)
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"
store=$work/store-$layers
if [ ! -d "$store/done-$type" ]; then
  echo "making $layers-layer bf16 and $type stores in $work" >&2
  rm -rf "$store" "$work/checkpoint"
  ckpt=$work/checkpoint
  "$cli" make-checkpoint "$ckpt" --arch qwen3_moe --preset qwen3-30b-a3b --layers "$layers" --quiet >/dev/null
  cp "$shared/tokenizers/qwen3/tokenizer.json" "$shared/tokenizers/qwen3/tokenizer_config.json" "$ckpt/"
  "$cli" ingest "$ckpt" --name bf16 --store "$store" --quiet >/dev/null
  OUT_TYPE=bf16 /usr/bin/python3 "$oracle/hf_to_gguf.py" "$ckpt" "$work/bf16.gguf" >/dev/null
  rm -rf "$ckpt"
  /usr/bin/python3 "$oracle/quantize.py" "$work/bf16.gguf" "$work/q.gguf" "$type" >/dev/null 2>&1
  rm -f "$work/bf16.gguf"
  "$cli" ingest "$work/q.gguf" --name q --store "$store" --quiet >/dev/null
  # The embedding table's bytes (a token reads one row of it), for the bandwidth figure below.
  PYTHONPATH=$GGUF_PY /usr/bin/python3 -c "import gguf, sys
print(sum(int(t.n_bytes) for t in gguf.GGUFReader(sys.argv[1]).tensors if t.name == 'token_embd.weight'))" \
    "$work/q.gguf" > "$store/embedding_bytes"
  rm -f "$work/q.gguf"
  mkdir "$store/done-$type"
fi
field() { /usr/bin/python3 -c "import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
prompt="The history of the river valley is long and full of stories about farmers, traders and travellers who came"
mib=$((1024 * 1024))
experts_mib() {
  "$cli" generate --model "$1" --store "$store" --prompt x --max-tokens 1 --json --no-record --cache-pct 100 --quiet |
    field 'd["configuration"]' | sed -n 's/.*experts (\([0-9.]*\) MiB.*/\1/p'
}
bf16_mib=$(experts_mib bf16)
cache_mb=$(/usr/bin/python3 -c "print(int($bf16_mib * $pct / 100))")
# run MODEL ACTIVATIONS CACHE_FLAGS...: one JSON line.
run() {
  local model=$1 act=$2
  shift 2
  sync
  [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches
  "$cli" generate --model "$model" --store "$store" --prompt "$prompt" --max-tokens "$tokens" --temperature 0 --json \
    --no-record --threads 2 --activations "$act" --quiet "$@"
}
echo "model: $layers layers, bf16 experts $bf16_mib MiB, $type experts $(experts_mib q) MiB; cache $cache_mb MiB" \
  "($pct% of the bf16 experts); $tokens tokens, 2 threads, median of $reps"
printf '%-14s %10s %10s %14s %10s\n' run tokens/s hit_rate MiB/token vs_bf16
declare -A tps
for spec in "bf16 exact" "q exact" "q q8"; do
  read -r model act <<< "$spec"
  t=() h=() m=()
  for _ in $(seq "$reps"); do
    out=$(run "$model" "$act" --cache-mb "$cache_mb")
    t+=("$(echo "$out" | field 'd["tokens_per_second"]')")
    h+=("$(echo "$out" | field 'd["cache"]["hits"] / max(1, d["cache"]["hits"] + d["cache"]["misses"])')")
    m+=("$(echo "$out" | field "d['cache']['bytes_read'] / $mib / max(1, len(d['tokens']))")")
  done
  tps[$spec]=$(es_median "${t[@]}")
  /usr/bin/python3 -c "print(f'{\"$model $act\":<14} {${tps[$spec]}:>10.2f} {$(es_median "${h[@]}"):>10.3f} \
{$(es_median "${m[@]}"):>14.1f} {${tps[$spec]} / ${tps[bf16 exact]}:>9.2f}x')"
done

# Every expert cached: decode against the memory bandwidth (bytes touched per token over the time).
bandwidth=$("$build/bench/kernels_bench" --benchmark_filter='BM_MemoryRead/threads:2' --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true 2>/dev/null | sed -n 's/.*median.*GB\/s=\([0-9.]*\).*/\1/p')
echo
echo "every expert cached ($type): bytes touched per token against the memory bandwidth ($bandwidth GB/s, BM_MemoryRead, 2 threads)"
printf '%-14s %10s %14s %12s\n' run tokens/s MB/token fraction
for act in exact q8; do
  t=()
  for _ in $(seq "$reps"); do
    out=$(run q "$act" --cache-pct 100 --warmup)
    t+=("$(echo "$out" | field 'd["tokens_per_second"]')")
  done
  # Bytes a decoded token touches: the dense weights (all but the embedding table, of which one row) and k experts
  # per layer at the model's mean expert size.
  touched=$("$cli" models --store "$store" --json | /usr/bin/python3 -c "
import json, sys
m = [d for d in json.load(sys.stdin) if d['name'] == 'q'][0]
experts = $(experts_mib q) * $mib
print(int(m['bytes'] - experts - $(cat "$store/embedding_bytes") + m['top_k'] * m['layers'] * experts / m['experts']))")
  /usr/bin/python3 -c "
t, b, bw = $(es_median "${t[@]}"), $touched, $bandwidth
print(f'{\"q $act\":<14} {t:>10.2f} {b / 1e6:>14.1f} {t * b / (bw * 1e9):>12.2f}')"
done
