// What a GGUF file's metadata says about its model, in the forms the rest of expertstore reads for a Hugging Face
// checkpoint: config.json, tokenizer.json and tokenizer_config.json, and each tensor's Hugging Face name. So a
// GGUF model and its safetensors original become the same model in the store (weights in their own formats).
//
// Architectures: qwen3moe, qwen2moe, olmoe, and llama with experts (Mixtral), which becomes the mixtral family.
// Others, and llama without experts, are NotSupported.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "ingest/gguf.h"
#include "store/base/status.h"

namespace es {

// The Hugging Face config.json of the model (architectures, model_type and the fields the forward pass reads).
Result<std::string> GgufConfigJson(const GgufHeader& header);

// A tokenizer.json equivalent to tokenizer.ggml.*: byte-level BPE ("gpt2") with the pre-tokenizer regex its
// `tokenizer.ggml.pre` names (qwen2, llama-bpe, gpt-2, olmo), control and user-defined tokens as added tokens;
// or SentencePiece ("llama": Llama, Mistral, Mixtral) as the byte-fallback BPE transformers converts it to, with
// merges ranked by the scores. NotSupported for other tokenizer models ("bert", "t5", ...) and unknown
// pre-tokenizers.
Result<std::string> GgufTokenizerJson(const GgufHeader& header);

// tokenizer_config.json: the special tokens, add_bos_token, and the chat template when the file has one.
Result<std::string> GgufTokenizerConfigJson(const GgufHeader& header);

// The Hugging Face name of a dense tensor of a model of GGUF architecture `arch` ("blk.3.attn_q.weight" ->
// "model.layers.3.self_attn.q_proj.weight"; the router is mlp.gate, or block_sparse_moe.gate for llama).
// Expert tensors (blk.N.ffn_{gate,up,down}_exps.weight) are not dense: InvalidArgument, as for unknown names.
// The per-expert tensors of old llama files (blk.N.ffn_gate.E.weight) are NotSupported.
Result<std::string> GgufDenseTensorHfName(std::string_view arch, std::string_view gguf_name);

// llama's converter reorders the rows of each head of the q and k projections (and their biases), so that
// llama.cpp's RoPE rotates adjacent pairs (x[2i], x[2i+1]) where the Hugging Face model rotates (x[i], x[i+D/2]).
// For such a tensor, the number of heads whose rows to put back: stored row h*D + 2i + s holds original row
// h*D + s*D/2 + i. 0 for every other tensor and architecture.
Result<uint32_t> GgufPermutedHeads(const GgufHeader& header, std::string_view gguf_name);

}  // namespace es
