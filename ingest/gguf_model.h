// What a GGUF file's metadata says about its model, in the forms the rest of expertstore reads for a Hugging Face
// checkpoint: config.json, tokenizer.json and tokenizer_config.json, and each tensor's Hugging Face name. So a
// GGUF model and its safetensors original become the same model in the store (weights in their own formats).
//
// Architectures: qwen3moe. The other MoE families GGUF carries (qwen2moe, olmoe, llama with experts) are
// refused with NotSupported until their mappings are checked against a file llama.cpp wrote.
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
// `tokenizer.ggml.pre` names (qwen2, llama-bpe, gpt-2); control and user-defined tokens become added tokens.
// NotSupported for other tokenizer models (SentencePiece "llama", "bert", ...) and unknown pre-tokenizers.
Result<std::string> GgufTokenizerJson(const GgufHeader& header);

// tokenizer_config.json: the special tokens, add_bos_token, and the chat template when the file has one.
Result<std::string> GgufTokenizerConfigJson(const GgufHeader& header);

// The Hugging Face name of a dense tensor ("blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight").
// Expert tensors (blk.N.ffn_{gate,up,down}_exps.weight) are not dense: InvalidArgument, as for unknown names.
Result<std::string> GgufDenseTensorHfName(std::string_view gguf_name);

}  // namespace es
