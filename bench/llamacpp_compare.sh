#!/usr/bin/env bash
# expertstore against llama.cpp on the same GGUF files, next-token distributions for the reference cases' prompts
# (llama.cpp's from npm's node-llama-cpp, expertstore's from the same file with its exact fp32 path and with
# --activations q8). Prints KL(llama.cpp || expertstore) per file, top-1 agreement, and each side's quantization
# cost, KL(its unquantized file || its quantized one). Then perplexity on the same text (the last 100 texts of the
# shared corpus, windows of 512 tokens that do not overlap): llama.cpp's (bench/llamacpp_ppl.c, llama.cpp's own
# tokenizer) against `expertstore eval` (exact and q8), after checking that both tokenized the text alike. Two models:
#   default: the tiny model converted by llama.cpp's own converter (F32) and quantized by llama_model_quantize
#     (Q8_0, Q4_K_M; its 128- and 96-wide rows take Q8_0/Q5_0 where a K-quant does not fit);
#   --q30 LAYERS: a Qwen3-30B-A3B-shaped checkpoint of LAYERS layers (make-checkpoint's preset, random weights,
#     the real Qwen3 tokenizer; rows of 2048 and 768, so real Q4_K, Q5_K and Q6_K blocks) converted to BF16 and
#     quantized to Q8_0, Q4_K_M, Q6_K and IQ4_XS. About 3 GiB of scratch space per layer.
# Needs the oracle of ../shared/oracles/llamacpp/README.md set up, with GGUF_PY, LLAMA_LIB_DIR and NODE_PATH.
# Usage: bench/llamacpp_compare.sh [--q30 LAYERS] [SHARED_DIR]     BUILD_DIR overrides build/.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}
q30=0
if [ "${1:-}" = --q30 ]; then q30=$2; shift 2; fi
shared=${1:-$root/../shared}
oracle=$shared/oracles/llamacpp
for v in GGUF_PY LLAMA_LIB_DIR NODE_PATH; do
  [ -n "${!v:-}" ] || { echo "$v is not set: set up the llama.cpp oracle ($oracle/README.md)" >&2; exit 2; }
done
work=$(mktemp -d /var/tmp/llamacpp-compare.XXXXXX)
trap 'rm -rf "$work"' EXIT
if [ "$q30" -gt 0 ]; then
  base=BF16 types=(Q8_0 Q4_K_M Q6_K IQ4_XS)
  ckpt=$work/checkpoint
  "$build/expertstore" make-checkpoint "$ckpt" --arch qwen3_moe --preset qwen3-30b-a3b --layers "$q30" --quiet >/dev/null
  cp "$shared/tokenizers/qwen3/tokenizer.json" "$shared/tokenizers/qwen3/tokenizer_config.json" "$ckpt/"
  OUT_TYPE=bf16 /usr/bin/python3 "$oracle/hf_to_gguf.py" "$ckpt" "$work/m-$base.gguf" >/dev/null
  rm -rf "$ckpt"
else
  base=F32 types=(Q8_0 Q4_K_M)
  /usr/bin/python3 "$oracle/hf_to_gguf.py" "$root/models/tiny-qwen3-moe" "$work/m-$base.gguf" >/dev/null
fi
for t in "${types[@]}"; do
  /usr/bin/python3 "$oracle/quantize.py" "$work/m-$base.gguf" "$work/m-$t.gguf" "$t" >/dev/null 2>&1
done
/usr/bin/python3 -c "import json, sys
for line in open(sys.argv[1]): print(','.join(map(str, json.loads(line)['ids'])))" \
  "$root/models/tiny-qwen3-moe/reference/cases.jsonl" > "$work/ids.txt"
gcc -O2 -o "$work/llamacpp_ppl" "$root/bench/llamacpp_ppl.c" -I"$GGUF_PY/../include" -I"$GGUF_PY/../ggml/include" \
  -L"$LLAMA_LIB_DIR" -l:libllama.v0.4.0.so -l:libggml.v0.4.0.so -l:libggml-base.so -Wl,-rpath,"$LLAMA_LIB_DIR" -lm
/usr/bin/python3 -c "import json, sys
lines = open(sys.argv[1]).read().splitlines()[-100:]  # no trailing space: tokenize gets it through $(cat)
open(sys.argv[2], 'w').write('\n\n'.join(json.loads(l)['text'] for l in lines).rstrip())" "$shared/corpus/domains.jsonl" "$work/text.txt"
threads=$(nproc)
for t in "$base" "${types[@]}"; do
  node "$oracle/llama_ref.mjs" "$work/m-$t.gguf" 1 < "$work/ids.txt" > "$work/llama-$t.jsonl" 2>/dev/null
  "$build/expertstore" ingest "$work/m-$t.gguf" --name "$t" --store "$work/store" --quiet
  while read -r ids; do
    "$build/expertstore" logits --model "$t" --ids "$ids" --no-record --json --store "$work/store"
  done < "$work/ids.txt" > "$work/ours-$t.jsonl"
  # The integer path (--activations q8: activations rounded to int8, as llama.cpp's kernels do).
  while read -r ids; do
    "$build/expertstore" logits --model "$t" --ids "$ids" --no-record --json --activations q8 --store "$work/store"
  done < "$work/ids.txt" > "$work/ours-$t-q8.jsonl"
  "$work/llamacpp_ppl" "$LLAMA_LIB_DIR" "$work/m-$t.gguf" "$work/text.txt" 512 "$threads" > "$work/ppl-llama-$t.json"
  for mode in exact q8; do
    "$build/expertstore" eval --model "$t" --text "$work/text.txt" --window 512 --activations "$mode" --no-record \
      --json --store "$work/store" > "$work/ppl-ours-$t-$mode.json"
  done
  "$build/expertstore" tokenize --model "$t" --text "$(cat "$work/text.txt")" --json --store "$work/store" \
    > "$work/ids-ours-$t.json"
done
/usr/bin/python3 - "$work" "$base" "${types[@]}" <<'PY'
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
    def normalised(r, size):
        total = sum(r.values())
        return [r.get(str(i), 0.0) / total for i in range(size)]
    llama[n] = [None if r is None else normalised(r, len(ours[n][0])) for r in rows]
# Cases llama.cpp gave no distribution for (it returns none when the prompt ends in an end-of-text token) are skipped.
cases = [i for i, p in enumerate(llama[names[0]]) if p is not None]
argmax = lambda p: max(range(len(p)), key=p.__getitem__)
print(f"{len(cases)} prompts; KL in nats, mean (median, max)")
print("expertstore exact: blocks decoded and multiplied in fp32; q8: --activations q8 (int8 activations, not exact)")
base = names[0]
print(f"{'file':14} {'KL(llama.cpp || expertstore)':>30} {'KL / llama cost':>15} {'same top-1':>11} "
      f"{'top-1, margin > 1e-3':>21} {'expertstore cost':>17} {'llama.cpp cost':>15} {'to llama unquantized':>21}")
mean = lambda v: sum(v) / len(v)
median = lambda v: sorted(v)[len(v) // 2]
def margin(p):
    top = sorted(p, reverse=True)
    return top[0] - top[1]
for n in names:
    for mode in ("exact", "q8"):
        o = ours[n if mode == "exact" else n + "-q8"]
        k = [kl(llama[n][i], o[i]) for i in cases]
        top = sum(argmax(llama[n][i]) == argmax(o[i]) for i in cases)
        clear = [i for i in cases if margin(llama[n][i]) > 1e-3]
        top_clear = sum(argmax(llama[n][i]) == argmax(o[i]) for i in clear)
        cost_o = [kl(ours[base][i], o[i]) for i in cases]
        cost_l = [kl(llama[base][i], llama[n][i]) for i in cases]
        # Against llama.cpp's run of the unquantized file: how far each side's quantized run is from the model.
        to_base = [kl(llama[base][i], o[i]) for i in cases]
        closer = sum(to_base[j] <= cost_l[j] for j in range(len(cases)))
        ratio = f"{mean(k) / mean(cost_l):.3f}" if n != base and mean(cost_l) > 0 else "-"
        print(f"{n + ' ' + mode:14} {mean(k):>10.3g} ({median(k):.2g}, {max(k):.2g}) {ratio:>15} {top:>7}/{len(cases)} "
              f"{top_clear:>17}/{len(clear)} {mean(cost_o):>17.3g} {mean(cost_l):>15.3g} "
              f"{mean(to_base):>10.3g} ({closer}/{len(cases)})")
print(f"costs: KL({base} file || this file) of each side; KL / llama cost: the first column over llama.cpp's cost;")
print(f"to llama unquantized: KL(llama.cpp's {base} run || expertstore's run of this file), mean, and on how many prompts")
print("it is at most llama.cpp's own cost (expertstore's quantized run at least as close to the model as llama.cpp's)")
print()
print("perplexity on the same text (windows of 512 tokens), llama.cpp against expertstore eval")
print(f"{'file':8} {'tokens':>7} {'same ids':>9} {'llama.cpp':>10} {'exact':>10} {'difference':>11} {'q8':>10} {'difference':>11}")
for n in names:
    l = json.load(open(f"{work}/ppl-llama-{n}.json"))
    same = json.load(open(f"{work}/ids-ours-{n}.json"))["ids"] == l["ids"]
    row = f"{n:8} {l['tokens']:>7} {'yes' if same else 'NO':>9} {l['perplexity']:>10.4f}"
    for mode in ("exact", "q8"):
        o = json.load(open(f"{work}/ppl-ours-{n}-{mode}.json"))
        if o["tokens"] != l["tokens"]:
            row += f" {'(' + str(o['tokens']) + ' tokens)':>22}"
            continue
        row += f" {o['perplexity']:>10.4f} {100 * (o['perplexity'] / l['perplexity'] - 1):>+10.3f}%"
    print(row)
PY
