#!/usr/bin/python3
"""Writes the fixtures from GGUF files llama.cpp quantized. In OUT_DIR/blocks, for each file: sixteen rows of expert
1 of blk.0.ffn_gate_exps.weight as stored (TYPE.blocks) and as gguf-py dequantizes them (TYPE.f32, little-endian
float32), the same rows of the F32 original (original.f32), and manifest.json describing them (make_fixtures.sh
adds ggml's own decoding of the same rows, TYPE.ggml.f32). In OUT_DIR,
header.json: what gguf-py reads from the header of one whole file (tensor names, types, dimensions, offsets, keys).
Usage: GGUF_PY=... extract.py OUT_DIR F32.gguf WHOLE.gguf QUANTIZED.gguf..."""
import json, os, sys
sys.path.insert(0, os.environ["GGUF_PY"])
import numpy as np
import gguf
from gguf.quants import dequantize

TENSOR, EXPERT, ROWS = "blk.0.ffn_gate_exps.weight", 1, list(range(15)) + [255]
root, f32_path, whole_path, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
out = os.path.join(root, "blocks")
os.makedirs(out, exist_ok=True)


def rows_of(reader):
    t = next(t for t in reader.tensors if t.name == TENSOR)
    data = np.asarray(t.data)  # [experts, rows, bytes per row] for quantized types, [experts, rows, cols] else
    return t, data[EXPERT][ROWS]


_, original = rows_of(gguf.GGUFReader(f32_path))
original.astype("<f4").tofile(os.path.join(out, "original.f32"))
manifest = {"tensor": TENSOR, "expert": EXPERT, "rows": ROWS, "row_elements": int(original.shape[1]), "types": []}
for path in files:
    t, raw = rows_of(gguf.GGUFReader(path))
    name = t.tensor_type.name
    raw = np.ascontiguousarray(raw)
    raw.view(np.uint8).tofile(os.path.join(out, name + ".blocks"))
    values = dequantize(raw.view(np.uint8), t.tensor_type).reshape(len(ROWS), -1)
    values.astype("<f4").tofile(os.path.join(out, name + ".f32"))
    rmse = float(np.sqrt(np.mean((values - original) ** 2)))
    manifest["types"].append({"type": name, "row_bytes": int(raw.view(np.uint8).shape[-1]), "rmse": rmse})
json.dump(manifest, open(os.path.join(out, "manifest.json"), "w"), indent=1)

r = gguf.GGUFReader(whole_path)
keys = {}
for k in ("general.architecture", "qwen3moe.block_count", "qwen3moe.expert_count", "qwen3moe.embedding_length",
          "tokenizer.ggml.model", "general.file_type"):
    f = r.fields[k]
    keys[k] = f.contents()
header = {"file": os.path.basename(whole_path), "version": int(r.fields["GGUF.version"].parts[0][0]),
          "alignment": r.alignment, "data_offset": r.data_offset, "key_count": len(r.fields) - 3,
          "token_count": len(r.fields["tokenizer.ggml.tokens"].data), "keys": keys,
          "tensors": [{"name": t.name, "type": t.tensor_type.name, "dims": [int(d) for d in t.shape],
                       "offset": int(t.data_offset) - r.data_offset, "bytes": int(t.n_bytes)} for t in r.tensors]}
json.dump(header, open(os.path.join(root, "header.json"), "w"), indent=1)
