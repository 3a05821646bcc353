#!/usr/bin/env bash
# The price of each precision mix in perplexity: a stored model quantized in the store (expertstore quantize) to
# all Q8_0, all Q4_K, the top quarter of each layer's experts by trust in Q8_0 and the rest Q4_K, the same by
# usage, and the same mix with its Q8_0 experts chosen at random (seeds 1 to --seeds, the control that shows whether
# trust or usage choose better than chance at the same bytes); each evaluated on a text the calibration did not
# see, against the source's own perplexity. --rest sets the rest's format (Q4_K; on the tiny model's 128- and
# 96-wide rows it falls back to Q5_0, as llama.cpp's does; Q4_0 shows the same comparison with a coarser grid).
# The store must hold the model's trust records (expertstore calibrate) and usage records (generate, eval).
# Usage: bench/precision_mix.sh --store S --model M --text HELD_OUT [--rest Q4_K] [--seeds 3] [--window 512]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cli=${BUILD_DIR:-$root/build}/expertstore
store="" model="" text="" rest=Q4_K seeds=3 window=512
while [ $# -gt 0 ]; do
  case $1 in
    --store) store=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --text) text=$2; shift 2 ;;
    --rest) rest=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --window) window=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$store" ] && [ -n "$model" ] && [ -n "$text" ] || { sed -n 2,10p "$0" >&2; exit 2; }

# eval's perplexity, mean KL against the source and top-1 agreement with it.
ppl() { "$cli" eval --store "$store" --model "$1" --text "$text" --window "$window" --no-record --cache-pct 100 --json \
          --reference "$model" |
          python3 -c 'import json, sys; d = json.load(sys.stdin); r = d["reference"]
print(d["perplexity"], r["mean_kl"], r["top1_agreement"])'; }
expert_bytes() { "$cli" experts --store "$store" --model "$1" --json |
                   python3 -c 'import json, sys; print(sum(e["bytes"] for e in json.load(sys.stdin)))'; }
quantize() { "$cli" quantize --store "$store" --model "$model" --to "$1" "${@:2}" --quiet; }

read -r base _ _ <<< "$(ppl "$model")"
base_bytes=$(expert_bytes "$model")
printf '%-42s %11s %10s %11s %8s %12s\n' "mix" "perplexity" "vs source" "KL" "top-1" "expert bytes"
# row LABEL "PPL KL AGREEMENT" BYTES
row() { read -r p k a <<< "$2"
        printf '%-42s %11.4f %+9.3f%% %11.3e %7.2f%% %11.3fx\n' "$1" "$p" "$(python3 -c "print(100 * ($p / $base - 1))")" \
          "$k" "$(python3 -c "print(100 * $a)")" "$(python3 -c "print($3 / $base_bytes)")"; }
row "$model (source)" "$base 0 1" "$base_bytes"
lower=$(echo "$rest" | tr 'A-Z' 'a-z')
for spec in "q8:--experts Q8_0" "$lower:--experts $rest" "trust:--experts-by trust:q8_0@25%,$lower@rest" \
            "usage:--experts-by usage:q8_0@25%,$lower@rest"; do
  name="$model-mix-${spec%%:*}"
  read -r -a flags <<< "${spec#*:}"
  quantize "$name" "${flags[@]}" --replace
  row "${flags[*]}" "$(ppl "$name")" "$(expert_bytes "$name")"
done
all=""
for seed in $(seq 1 "$seeds"); do
  name="$model-mix-random$seed"
  quantize "$name" --experts-by "random:q8_0@25%,$lower@rest,seed=$seed" --replace
  m=$(ppl "$name")
  row "--experts-by random (seed $seed)" "$m" "$(expert_bytes "$name")"
  all="$all$m;"
done
row "random, mean of $seeds seeds" "$(python3 -c "
rows = [list(map(float, r.split())) for r in '$all'.split(';') if r]
print(*[sum(c) / len(rows) for c in zip(*rows)])")" "$(expert_bytes "$model-mix-random1")"
