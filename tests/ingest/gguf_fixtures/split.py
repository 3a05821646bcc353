#!/usr/bin/python3
"""Splits a GGUF file with gguf-py's own writer (GGUFWriter(split_max_tensors=N), as llama.cpp's converter
splits): every key/value goes to the first file, each file gets split.no, split.count and split.tensors.count, and
the tensors keep their types and bytes. Writes OUT_PREFIX-0000i-of-0000n.gguf.
Usage: GGUF_PY=... split.py IN.gguf OUT_PREFIX MAX_TENSORS_PER_FILE"""
import os, sys
from pathlib import Path
sys.path.insert(0, os.environ["GGUF_PY"])
import gguf
import numpy as np

src, prefix, per_file = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = gguf.GGUFReader(src)
arch = r.fields["general.architecture"].contents()
w = gguf.GGUFWriter(prefix + ".gguf", arch, split_max_tensors=per_file)
for name, field in r.fields.items():
    if name.startswith("GGUF.") or name == "general.architecture":
        continue
    vtype = field.types[0]
    sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
    w.add_key_value(name, field.contents(), vtype, sub_type=sub)
for t in r.tensors:
    # The stored bytes and type (gguf-py takes the numpy shape of the bytes and derives the tensor's own).
    data = np.asarray(t.data)
    w.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=t.tensor_type)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
