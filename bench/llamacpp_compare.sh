#!/usr/bin/env bash
# expertstore against llama.cpp on the same GGUF files: the tiny model converted by llama.cpp's own converter
# (F32) and quantized by llama_model_quantize (Q8_0, Q4_K_M; its 128- and 96-wide rows take Q8_0/Q5_0 where a
# K-quant does not fit), then, for the reference cases' prompts, llama.cpp's next-token distribution (npm's
# node-llama-cpp) and expertstore's, from the same file, with its exact fp32 path and with --activations q8. Prints
# KL(llama.cpp || expertstore) per file and each side's quantization cost, KL(its F32 || its quantized).
# Needs the oracle of ../shared/oracles/llamacpp/README.md set up, with GGUF_PY, LLAMA_LIB_DIR and NODE_PATH.
# Usage: bench/llamacpp_compare.sh [SHARED_DIR]     BUILD_DIR overrides build/.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}
shared=${1:-$root/../shared}
oracle=$shared/oracles/llamacpp
for v in GGUF_PY LLAMA_LIB_DIR NODE_PATH; do
  [ -n "${!v:-}" ] || { echo "$v is not set: set up the llama.cpp oracle ($oracle/README.md)" >&2; exit 2; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
types=(Q8_0 Q4_K_M)
/usr/bin/python3 "$oracle/hf_to_gguf.py" "$root/models/tiny-qwen3-moe" "$work/tiny-F32.gguf" >/dev/null
for t in "${types[@]}"; do
  /usr/bin/python3 "$oracle/quantize.py" "$work/tiny-F32.gguf" "$work/tiny-$t.gguf" "$t" >/dev/null 2>&1
done
/usr/bin/python3 -c "import json, sys
for line in open(sys.argv[1]): print(','.join(map(str, json.loads(line)['ids'])))" \
  "$root/models/tiny-qwen3-moe/reference/cases.jsonl" > "$work/ids.txt"
for t in F32 "${types[@]}"; do
  node "$oracle/llama_ref.mjs" "$work/tiny-$t.gguf" 1 < "$work/ids.txt" > "$work/llama-$t.jsonl" 2>/dev/null
  "$build/expertstore" ingest "$work/tiny-$t.gguf" --name "$t" --store "$work/store" --quiet
  while read -r ids; do
    "$build/expertstore" logits --model "$t" --ids "$ids" --no-record --json --store "$work/store"
  done < "$work/ids.txt" > "$work/ours-$t.jsonl"
  # The integer path (--activations q8: activations rounded to int8, as llama.cpp's kernels do).
  while read -r ids; do
    "$build/expertstore" logits --model "$t" --ids "$ids" --no-record --json --activations q8 --store "$work/store"
  done < "$work/ids.txt" > "$work/ours-$t-q8.jsonl"
done
/usr/bin/python3 - "$work" F32 "${types[@]}" <<'PY'
import json, math, sys
work, names = sys.argv[1], sys.argv[2:]
def softmax(logits):
    m = max(logits)
    e = [math.exp(x - m) for x in logits]
    s = sum(e)
    return [x / s for x in e]
def kl(p, q):
    return sum(a * math.log(a / max(b, 1e-30)) for a, b in zip(p, q) if a > 0)
llama, ours = {}, {}
for n in names:
    ours[n] = [softmax(json.loads(l)["logits"]) for l in open(f"{work}/ours-{n}.jsonl")]
    ours[n + "-q8"] = [softmax(json.loads(l)["logits"]) for l in open(f"{work}/ours-{n}-q8.jsonl")]
    rows = [json.loads(l)["probs"] for l in open(f"{work}/llama-{n}.jsonl")]
    # llama.cpp's probabilities sum to 1 within float rounding; normalised so that a KL of equal inputs is 0.
    llama[n] = [None if r is None else [r.get(str(i), 0.0) / sum(r.values()) for i in range(len(ours[n][0]))]
                for r in rows]
# Cases llama.cpp gave no distribution for (it returns none when the prompt ends in an end-of-text token) are skipped.
cases = [i for i, p in enumerate(llama[names[0]]) if p is not None]
argmax = lambda p: max(range(len(p)), key=p.__getitem__)
print(f"{len(cases)} prompts; KL in nats, mean (max)")
print("expertstore exact: blocks decoded and multiplied in fp32; q8: --activations q8 (int8 activations, not exact)")
print(f"{'file':14} {'KL(llama.cpp || expertstore)':>30} {'same top-1':>11} {'expertstore F32 cost':>21} {'llama.cpp F32 cost':>19}")
mean = lambda v: sum(v) / len(v)
for n in names:
    for mode in ("exact", "q8"):
        o = ours[n if mode == "exact" else n + "-q8"]
        k = [kl(llama[n][i], o[i]) for i in cases]
        top = sum(argmax(llama[n][i]) == argmax(o[i]) for i in cases)
        cost_o = [kl(ours[names[0]][i], o[i]) for i in cases]
        cost_l = [kl(llama[names[0]][i], llama[n][i]) for i in cases]
        print(f"{n + ' ' + mode:14} {mean(k):>18.3g} ({max(k):.2g}) {top:>7}/{len(cases)} {mean(cost_o):>21.3g} "
              f"{mean(cost_l):>19.3g}")
PY
