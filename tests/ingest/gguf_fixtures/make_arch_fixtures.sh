#!/usr/bin/env bash
# Remakes the GGUF fixtures of the families other than qwen3moe, with llama.cpp itself (the oracle set up as
# ../shared/oracles/llamacpp/README.md says, with GGUF_PY, LLAMA_LIB_DIR and NODE_PATH exported):
# - qwen2moe.gguf, olmoe.gguf, mixtral.gguf: small random-weight checkpoints of those families (make-checkpoint,
#   F32, seeds 11-13; qwen2moe and Mixtral with fewer key/value heads than query heads, OLMoE without, as
#   llama.cpp's OLMoE graph sizes k_norm by the hidden size) converted by hf_to_gguf_moe.py;
# - aidreams.gguf: the real aidreams-mixtral model (architecture llama with experts, SentencePiece tokenizer with
#   the scores of its original llama2.c tokenizer);
# - ARCH-llama.jsonl: llama.cpp's own next-token distribution and greedy continuation (8 tokens) after each prompt
#   of ARCH-prompts.txt, computed from the .gguf file (llama_ref.mjs);
# - mixtral-Q8_0.gguf: mixtral.gguf quantized by llama.cpp's own quantizer, with its llama.cpp outputs likewise.
# Usage: make_arch_fixtures.sh EXPERTSTORE SHARED_DIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cli=$1 shared=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
shape=(--layers 2 --experts 4 --top-k 2 --hidden 32 --moe-intermediate 16 --heads 4 --vocab 288
  --dtype f32)
seed=11
for arch in qwen2_moe olmoe mixtral; do
  kv=2
  [ "$arch" = olmoe ] && kv=4
  "$cli" make-checkpoint "$work/$arch" --arch "$arch" "${shape[@]}" --kv-heads "$kv" --seed "$seed" >/dev/null
  /usr/bin/python3 "$here/hf_to_gguf_moe.py" "$work/$arch" "$here/${arch/_/}.gguf" >/dev/null
  seed=$((seed + 1))
done
/usr/bin/python3 "$here/hf_to_gguf_moe.py" "$shared/models/aidreams-mixtral" "$here/aidreams.gguf" \
  "$shared/models/aidreams-mixtral/original/tok512.bin" >/dev/null
# The Mixtral quantized by llama.cpp's own quantizer (Q8_0; its 16-wide down rows fall back to F16): the q and k
# rows it reorders are then rows of blocks.
/usr/bin/python3 "$shared/oracles/llamacpp/quantize.py" "$here/mixtral.gguf" "$here/mixtral-Q8_0.gguf" Q8_0 >/dev/null 2>&1
# Prompts: token ids below 256 (the byte tokens of the random models), and BOS-led ids for aidreams.
/usr/bin/python3 - "$here" <<'EOF'
import random, sys
here = sys.argv[1]
rng = random.Random(5)
for name, lo, hi, bos in (("qwen2moe", 0, 256, None), ("olmoe", 0, 256, None), ("mixtral", 0, 256, None),
                          ("aidreams", 3, 512, 1)):
    with open(f"{here}/{name}-prompts.txt", "w") as f:
        for n in (1, 5, 23, 60):
            ids = [rng.randrange(lo, hi) for _ in range(n)]
            if bos is not None:
                ids[0] = bos
            f.write(",".join(map(str, ids)) + "\n")
EOF
cp "$here/mixtral-prompts.txt" "$here/mixtral-Q8_0-prompts.txt"
for name in qwen2moe olmoe mixtral mixtral-Q8_0 aidreams; do
  node "$shared/oracles/llamacpp/llama_ref.mjs" "$here/$name.gguf" 8 < "$here/$name-prompts.txt" > "$here/$name-llama.jsonl"
done
