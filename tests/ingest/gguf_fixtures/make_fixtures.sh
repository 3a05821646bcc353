#!/usr/bin/env bash
# Remakes the GGUF fixtures with llama.cpp itself (its converter, quantizer and gguf-py; the oracle set up as
# ../shared/oracles/llamacpp/README.md says, with GGUF_PY and LLAMA_LIB_DIR exported): a one-layer, two-expert
# Qwen3-MoE of 256-wide rows (so that K-quant blocks apply) with random weights, converted to F32 GGUF, then
# quantized by llama_model_quantize to each block format. Keeps one whole file (small-Q4_K_M.gguf) and the same file
# split in two by gguf-py's writer (small-Q4_K_M-0000i-of-00002.gguf, split.py), header.json
# (what gguf-py reads from it), and blocks/: sixteen rows of one expert per format, as stored, as gguf-py
# dequantizes them (TYPE.f32) and as ggml itself does (TYPE.ggml.f32: the type's to_float in libggml-base, through
# ggml_to_float.c). And the header of the tiny model's BF16 GGUF (tiny-qwen3-moe-bf16.gguf-header, the bytes before
# its data section; the whole file's size and checksum in tiny-qwen3-moe.json).
# Usage: make_fixtures.sh EXPERTSTORE SHARED_DIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cli=$1 shared=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$cli" make-checkpoint "$work/small" --arch qwen3_moe --layers 1 --experts 2 --top-k 1 --hidden 256 \
  --moe-intermediate 256 --heads 2 --kv-heads 1 --vocab 320 --dtype f32 --seed 7 >/dev/null
/usr/bin/python3 "$shared/oracles/llamacpp/hf_to_gguf.py" "$work/small" "$work/small-f32.gguf" >/dev/null
# The oracle's quantizer, with the three formats it does not name (llama_ftype numbers from llama.h).
sed 's/^FTYPES = {/FTYPES = {"Q4_1": 3, "Q5_1": 9, "IQ4_NL": 25, /' "$shared/oracles/llamacpp/quantize.py" > "$work/quantize.py"
types=(Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K_M Q5_K_M Q6_K IQ4_NL IQ4_XS F16 BF16)
for t in "${types[@]}"; do /usr/bin/python3 "$work/quantize.py" "$work/small-f32.gguf" "$work/small-$t.gguf" "$t" >/dev/null 2>&1; done
/usr/bin/python3 "$here/extract.py" "$here" "$work/small-f32.gguf" "$work/small-Q4_K_M.gguf" \
  $(for t in "${types[@]}"; do echo "$work/small-$t.gguf"; done)
cc -O2 -o "$work/ggml_to_float" "$here/ggml_to_float.c" -I"$GGUF_PY/../ggml/include" -L"$LLAMA_LIB_DIR" -lggml-base \
  -Wl,-rpath,"$LLAMA_LIB_DIR"
cols=$(/usr/bin/python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['row_elements'])" "$here/blocks/manifest.json")
for t in $(/usr/bin/python3 -c "import json, sys; print(' '.join(e['type'] for e in json.load(open(sys.argv[1]))['types']))" \
    "$here/blocks/manifest.json"); do
  "$work/ggml_to_float" "$t" "$cols" "$here/blocks/$t.blocks" "$here/blocks/$t.ggml.f32"
  cmp -s "$here/blocks/$t.f32" "$here/blocks/$t.ggml.f32" && echo "$t: gguf-py and ggml decode alike" \
    || echo "$t: gguf-py and ggml decode differently"
done
cp "$work/small-Q4_K_M.gguf" "$here/"
/usr/bin/python3 "$here/split.py" "$here/small-Q4_K_M.gguf" "$here/small-Q4_K_M" 8
root=$(cd "$here/../../.." && pwd)
OUT_TYPE=bf16 /usr/bin/python3 "$shared/oracles/llamacpp/hf_to_gguf.py" "$root/models/tiny-qwen3-moe" "$work/tiny.gguf" >/dev/null
data_offset=$(GGUF=$work/tiny.gguf /usr/bin/python3 -c "import os, sys; sys.path.insert(0, os.environ['GGUF_PY']); import gguf
print(gguf.GGUFReader(os.environ['GGUF']).data_offset)" 2>/dev/null)
head -c "$data_offset" "$work/tiny.gguf" > "$here/tiny-qwen3-moe-bf16.gguf-header"
# The whole file's XXH3-64 (python3-xxhash): the tests rebuild the file from this header and the model's own
# weights, and check that they made exactly the bytes llama.cpp's converter wrote.
xxh3=$(/usr/bin/python3 -c "import sys, xxhash; print(xxhash.xxh3_64_hexdigest(open(sys.argv[1], 'rb').read()))" "$work/tiny.gguf")
printf '{"file": "tiny-qwen3-moe-bf16.gguf-header", "file_size": %d, "xxh3": "%s"}\n' "$(stat -c %s "$work/tiny.gguf")" \
  "$xxh3" > "$here/tiny-qwen3-moe.json"
