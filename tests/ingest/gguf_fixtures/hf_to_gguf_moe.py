#!/usr/bin/python3
"""Converts a small Hugging Face MoE checkpoint of the qwen2_moe, olmoe or mixtral family (one model.safetensors,
f32 or bf16) to an F32 GGUF file that llama.cpp loads, with llama.cpp's gguf-py: its writer, its architecture
names and its tensor-name table (gguf.get_tensor_name_map), and the conventions of llama.cpp's converter for
these families: experts stacked into 3-D blk.N.ffn_{gate,up,down}_exps tensors, qwen2moe's expert widths in
expert_feed_forward_length and expert_shared_feed_forward_length, OLMoE's RMSNorm epsilon written as 1e-5, and
Mixtral as architecture llama with the rows of each q and k head reordered for llama.cpp's RoPE on adjacent
pairs. The tokenizer: a byte-level BPE tokenizer.json becomes tokenizer.ggml.model gpt2; a SentencePiece-BPE one
(byte fallback, U+2581 spaces) becomes tokenizer.ggml.model llama, with each token's score read from the
llama2.c tokenizer file given as SCORES (score = float32, length, bytes per token).
Usage: GGUF_PY=... hf_to_gguf_moe.py HF_DIR OUT.gguf [SCORES]"""
import json, os, struct, sys
sys.path.insert(0, os.environ["GGUF_PY"])
import numpy as np
import gguf

src, out = sys.argv[1], sys.argv[2]
scores_file = sys.argv[3] if len(sys.argv) > 3 else None
cfg = json.load(open(os.path.join(src, "config.json")))
family = cfg["model_type"]
ARCH = {"qwen2_moe": gguf.MODEL_ARCH.QWEN2MOE, "olmoe": gguf.MODEL_ARCH.OLMOE, "mixtral": gguf.MODEL_ARCH.LLAMA}[family]
L = cfg["num_hidden_layers"]
E = cfg["num_local_experts"] if family == "mixtral" else cfg["num_experts"]
H, heads = cfg["hidden_size"], cfg["num_attention_heads"]
kv_heads = cfg.get("num_key_value_heads", heads)
head_dim = cfg.get("head_dim", H // heads)

with open(os.path.join(src, "model.safetensors"), "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        f.seek(base + a)
        raw = f.read(b - a)
        if info["dtype"] == "F32":
            t = np.frombuffer(raw, dtype=np.float32)
        elif info["dtype"] == "BF16":
            t = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            raise SystemExit(f"unsupported dtype {info['dtype']}")
        tensors[name] = t.reshape(info["shape"])


def permute(w, n_head):
    """llama.cpp's converter's reordering of q/k rows (LlamaModel.permute): rotate-half pairs to adjacent pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


w = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[ARCH])
w.add_name(os.path.basename(os.path.normpath(src)))
w.add_context_length(cfg.get("max_position_embeddings", 2048))
w.add_embedding_length(H)
w.add_block_count(L)
w.add_head_count(heads)
w.add_head_count_kv(kv_heads)
w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
w.add_layer_norm_rms_eps(1e-5 if family == "olmoe" else cfg["rms_norm_eps"])
w.add_expert_count(E)
w.add_expert_used_count(cfg["num_experts_per_tok"])
w.add_file_type(gguf.LlamaFileType.ALL_F32)
if family == "qwen2_moe":
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
else:
    w.add_feed_forward_length(cfg["intermediate_size"])  # the experts' width for llama and olmoe
if family == "mixtral":
    w.add_rope_dimension_count(head_dim)
if "head_dim" in cfg and cfg["head_dim"] != H // heads:
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)

tok = json.load(open(os.path.join(src, "tokenizer.json")))
vocab = tok["model"]["vocab"]
added = {t["id"]: t["content"] for t in tok.get("added_tokens", [])}
inv = {i: s for s, i in vocab.items()}
n_vocab = cfg["vocab_size"]
toks, types = [], []
spm = tok["model"].get("byte_fallback", False)
for i in range(n_vocab):
    if i in added:
        toks.append(added[i])
        types.append(gguf.TokenType.UNKNOWN if added[i] == tok["model"].get("unk_token") else gguf.TokenType.CONTROL)
    elif i in inv:
        s = inv[i]
        toks.append(s)
        byte = spm and len(s) == 6 and s.startswith("<0x") and s.endswith(">")
        types.append(gguf.TokenType.BYTE if byte else gguf.TokenType.NORMAL)
    else:
        toks.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
if spm:
    raw = open(scores_file, "rb").read()
    o, scores = 4, []
    while o < len(raw):
        score, length = struct.unpack("<fi", raw[o:o + 8])
        scores.append(score)
        o += 8 + length
    assert len(scores) == n_vocab, (len(scores), n_vocab)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(vocab[tok["model"]["unk_token"]] if tok["model"]["unk_token"] in vocab else
                       [i for i, t in added.items() if t == tok["model"]["unk_token"]][0])
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
else:
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    if not merges:
        # llama.cpp refuses a byte-level vocabulary without merges (make-checkpoint's has none): give it one, with
        # its token in the first padding slot.
        pad = types.index(gguf.TokenType.UNUSED)
        toks[pad], types[pad] = "\u0120\u0120", gguf.TokenType.NORMAL
        merges = ["\u0120 \u0120"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre({"qwen2_moe": "qwen2", "olmoe": "olmo", "mixtral": "llama-bpe"}[family])
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_add_bos_token(False)
w.add_bos_token_id(cfg["bos_token_id"] if cfg.get("bos_token_id") is not None else cfg["eos_token_id"])
w.add_eos_token_id(cfg["eos_token_id"])

tmap = gguf.get_tensor_name_map(ARCH, L)
moe = "block_sparse_moe" if family == "mixtral" else "mlp"
projections = {"mixtral": ("w1", "w3", "w2")}.get(family, ("gate_proj", "up_proj", "down_proj"))
plan = []  # (gguf name, array)


def add(hf, data):
    name = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise SystemExit(f"llama.cpp's tensor map has no name for {hf}")
    plan.append((name, np.ascontiguousarray(data, dtype=np.float32)))


stacked = set()
for hf, data in tensors.items():
    if ".experts." in hf:
        continue
    if family == "mixtral" and hf.endswith("self_attn.q_proj.weight"):
        data = permute(data, heads)
    if family == "mixtral" and hf.endswith("self_attn.k_proj.weight"):
        data = permute(data, kv_heads)
    add(hf, data)
if "lm_head.weight" not in tensors and not cfg.get("tie_word_embeddings", False):
    raise SystemExit("no lm_head.weight and the embeddings are not tied")
for layer in range(L):
    for proj in projections:
        parts = [tensors[f"model.layers.{layer}.{moe}.experts.{e}.{proj}.weight"] for e in range(E)]
        add(f"model.layers.{layer}.{moe}.experts.{proj}.weight", np.stack(parts))

for name, data in plan:
    w.add_tensor(name, data)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(out)
