// GGUF metadata to Hugging Face config, tokenizer and tensor names (the names llama.cpp's converter maps from).
#include "ingest/gguf_model.h"

#include <array>
#include <utility>

#include "store/base/json.h"

namespace es {
namespace {

constexpr std::string_view kArchKey = "general.architecture";
constexpr std::string_view kQwen3Moe = "qwen3moe";
constexpr std::string_view kGpt2Model = "gpt2";  // byte-level BPE
// tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
constexpr int64_t kTokenControl = 3;
constexpr int64_t kTokenUserDefined = 4;
constexpr int64_t kTokenUnused = 5;

// Pre-tokenizer regexes by tokenizer.ggml.pre, as the Hugging Face tokenizers of those families spell them.
struct PreTokenizer {
  std::string_view name;
  std::string_view regex;
  bool nfc;  // Qwen2's tokenizers normalise to NFC first
};
constexpr std::string_view kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::array<PreTokenizer, 4> kPreTokenizers = {{
    {"qwen2",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
     true},
    {"llama-bpe",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
     false},
    {"gpt-2", kGpt2Regex, false},
    {"default", kGpt2Regex, false},
}};

// blk.N.<suffix> -> model.layers.N.<hf suffix>, for the dense tensors of a layer.
constexpr std::array<std::pair<std::string_view, std::string_view>, 16> kLayerTensors = {{
    {"attn_norm.weight", "input_layernorm.weight"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"attn_q.bias", "self_attn.q_proj.bias"},
    {"attn_k.bias", "self_attn.k_proj.bias"},
    {"attn_v.bias", "self_attn.v_proj.bias"},
    {"attn_q_norm.weight", "self_attn.q_norm.weight"},
    {"attn_k_norm.weight", "self_attn.k_norm.weight"},
    {"ffn_gate_inp.weight", "mlp.gate.weight"},
    {"ffn_gate_inp_shexp.weight", "mlp.shared_expert_gate.weight"},
    {"ffn_gate_shexp.weight", "mlp.shared_expert.gate_proj.weight"},
    {"ffn_up_shexp.weight", "mlp.shared_expert.up_proj.weight"},
    {"ffn_down_shexp.weight", "mlp.shared_expert.down_proj.weight"},
}};

Result<std::string> Architecture(const GgufHeader& h) {
  ES_ASSIGN_OR_RETURN(std::string arch, h.GetString(kArchKey));
  if (arch != kQwen3Moe) {
    return Status::NotSupported("GGUF architecture '" + arch + "' is not supported (this build maps " +
                                std::string(kQwen3Moe) + ")");
  }
  return arch;
}

// A key of the architecture's own namespace ("qwen3moe.block_count").
std::string ArchKey(const std::string& arch, std::string_view key) { return arch + "." + std::string(key); }

const GgufValue* TokenArray(const GgufHeader& h, std::string_view key) {
  const GgufValue* v = h.Find(key);
  return v != nullptr && v->type == GgufValueType::kArray ? v : nullptr;
}

// The tokens' types; all normal when the file lists none.
Result<std::vector<int64_t>> TokenTypes(const GgufHeader& h, size_t n) {
  const GgufValue* types = TokenArray(h, "tokenizer.ggml.token_type");
  if (types == nullptr) return std::vector<int64_t>(n, 1);
  if (types->integers.size() != n) {
    return Status::InvalidArgument("tokenizer.ggml.token_type has " + std::to_string(types->array_size()) +
                                   " entries for " + std::to_string(n) + " tokens");
  }
  return types->integers;
}

// The token the key names by id ("tokenizer.ggml.eos_token_id"), or "" when the file has none.
Result<std::string> SpecialToken(const GgufHeader& h, std::string_view key, const std::vector<std::string>& tokens) {
  auto id = h.GetUint(key);
  if (!id.ok()) return id.status().IsNotFound() ? std::string() : Result<std::string>(id.status());
  if (*id >= tokens.size()) return Status::InvalidArgument(std::string(key) + " is " + std::to_string(*id) + ", past the vocabulary");
  return tokens[*id];
}

}  // namespace

Result<std::string> GgufConfigJson(const GgufHeader& h) {
  ES_ASSIGN_OR_RETURN(std::string arch, Architecture(h));
  auto u32 = [&](std::string_view key) { return h.GetU32(ArchKey(arch, key)); };
  ES_ASSIGN_OR_RETURN(uint32_t layers, u32("block_count"));
  ES_ASSIGN_OR_RETURN(uint32_t hidden, u32("embedding_length"));
  ES_ASSIGN_OR_RETURN(uint32_t heads, u32("attention.head_count"));
  ES_ASSIGN_OR_RETURN(uint32_t experts, u32("expert_count"));
  ES_ASSIGN_OR_RETURN(uint32_t top_k, u32("expert_used_count"));
  ES_ASSIGN_OR_RETURN(uint32_t expert_ffn, u32("expert_feed_forward_length"));
  ES_ASSIGN_OR_RETURN(double eps, h.GetFloat(ArchKey(arch, "attention.layer_norm_rms_epsilon")));
  auto kv_heads = u32("attention.head_count_kv");
  auto head_dim = u32("attention.key_length");
  auto ffn = u32("feed_forward_length");
  auto context = u32("context_length");
  auto theta = h.GetFloat(ArchKey(arch, "rope.freq_base"));
  const GgufValue* tokens = TokenArray(h, "tokenizer.ggml.tokens");
  if (tokens == nullptr) return Status::InvalidArgument("the GGUF file has no tokenizer.ggml.tokens: its vocabulary size is unknown");
  // The output matrix's rows are the vocabulary when the token list is shorter (padding rows).
  uint64_t vocab = tokens->array_size();
  for (std::string_view name : {"output.weight", "token_embd.weight"}) {
    if (const GgufTensorInfo* t = h.FindTensor(name); t != nullptr && t->dims.size() == 2) {
      vocab = t->dims[1];
      break;
    }
  }

  JsonWriter w;
  w.BeginObject();
  w.Key("architectures").BeginArray().String("Qwen3MoeForCausalLM").EndArray();
  w.Key("model_type").String("qwen3_moe");
  w.Key("vocab_size").Uint(vocab);
  w.Key("hidden_size").Uint(hidden);
  w.Key("num_hidden_layers").Uint(layers);
  w.Key("num_attention_heads").Uint(heads);
  w.Key("num_key_value_heads").Uint(kv_heads.ok() ? *kv_heads : heads);
  if (head_dim.ok()) w.Key("head_dim").Uint(*head_dim);
  w.Key("num_experts").Uint(experts);
  w.Key("num_experts_per_tok").Uint(top_k);
  w.Key("moe_intermediate_size").Uint(expert_ffn);
  if (ffn.ok()) w.Key("intermediate_size").Uint(*ffn);
  // llama.cpp's qwen3moe graph always renormalises the top-k weights, as every released Qwen3-MoE config says.
  w.Key("norm_topk_prob").Bool(true);
  w.Key("rms_norm_eps").Double(eps);
  if (theta.ok()) w.Key("rope_theta").Double(*theta);
  if (context.ok()) w.Key("max_position_embeddings").Uint(*context);
  w.Key("tie_word_embeddings").Bool(h.FindTensor("output.weight") == nullptr);
  w.Key("hidden_act").String("silu");
  for (auto [key, field] : {std::pair<std::string_view, std::string_view>{"tokenizer.ggml.bos_token_id", "bos_token_id"},
                            {"tokenizer.ggml.eos_token_id", "eos_token_id"}}) {
    if (auto id = h.GetUint(key); id.ok()) w.Key(field).Uint(*id);
  }
  w.EndObject();
  return w.Take();
}

Result<std::string> GgufTokenizerJson(const GgufHeader& h) {
  ES_ASSIGN_OR_RETURN(std::string model, h.GetString("tokenizer.ggml.model"));
  if (model != kGpt2Model) {
    return Status::NotSupported("GGUF tokenizer model '" + model + "' is not supported (byte-level BPE, '" +
                                std::string(kGpt2Model) + "', is)");
  }
  auto pre_name = h.GetString("tokenizer.ggml.pre");
  const std::string pre = pre_name.ok() ? *pre_name : "default";
  const PreTokenizer* pre_tokenizer = nullptr;
  for (const PreTokenizer& p : kPreTokenizers) {
    if (p.name == pre) pre_tokenizer = &p;
  }
  if (pre_tokenizer == nullptr) {
    return Status::NotSupported("GGUF pre-tokenizer '" + pre + "' is not supported (qwen2, llama-bpe and gpt-2 are)");
  }
  const GgufValue* tokens = TokenArray(h, "tokenizer.ggml.tokens");
  const GgufValue* merges = TokenArray(h, "tokenizer.ggml.merges");
  if (tokens == nullptr || tokens->strings.size() != tokens->array_size() || tokens->strings.empty()) {
    return Status::InvalidArgument("tokenizer.ggml.tokens is missing or not a list of strings");
  }
  // No merges: a vocabulary of bytes and added tokens only (no BPE merge applies).
  if (merges != nullptr && merges->strings.size() != merges->array_size()) {
    return Status::InvalidArgument("tokenizer.ggml.merges is not a list of strings");
  }
  static const GgufValue kNoMerges;
  const std::vector<std::string>& vocab = tokens->strings;
  ES_ASSIGN_OR_RETURN(std::vector<int64_t> types, TokenTypes(h, vocab.size()));

  JsonWriter w;
  w.BeginObject();
  w.Key("version").String("1.0");
  w.Key("truncation").Null();
  w.Key("padding").Null();
  w.Key("added_tokens").BeginArray();
  for (size_t id = 0; id < vocab.size(); ++id) {
    if (types[id] != kTokenControl && types[id] != kTokenUserDefined) continue;
    w.BeginObject().Key("id").Uint(id).Key("content").String(vocab[id]);
    w.Key("single_word").Bool(false).Key("lstrip").Bool(false).Key("rstrip").Bool(false);
    w.Key("normalized").Bool(false).Key("special").Bool(types[id] == kTokenControl).EndObject();
  }
  w.EndArray();
  if (pre_tokenizer->nfc) {
    w.Key("normalizer").BeginObject().Key("type").String("NFC").EndObject();
  } else {
    w.Key("normalizer").Null();
  }
  auto byte_level = [&] {
    w.BeginObject().Key("type").String("ByteLevel").Key("add_prefix_space").Bool(false);
    w.Key("trim_offsets").Bool(false).Key("use_regex").Bool(false).EndObject();
  };
  w.Key("pre_tokenizer").BeginObject().Key("type").String("Sequence").Key("pretokenizers").BeginArray();
  w.BeginObject().Key("type").String("Split");
  w.Key("pattern").BeginObject().Key("Regex").String(pre_tokenizer->regex).EndObject();
  w.Key("behavior").String("Isolated").Key("invert").Bool(false).EndObject();
  byte_level();
  w.EndArray().EndObject();
  w.Key("post_processor");
  byte_level();
  w.Key("decoder");
  byte_level();
  w.Key("model").BeginObject().Key("type").String("BPE").Key("dropout").Null().Key("unk_token").Null();
  w.Key("continuing_subword_prefix").String("").Key("end_of_word_suffix").String("");
  w.Key("fuse_unk").Bool(false).Key("byte_fallback").Bool(false).Key("ignore_merges").Bool(false);
  w.Key("vocab").BeginObject();
  for (size_t id = 0; id < vocab.size(); ++id) {
    // Added tokens live in added_tokens; unused ones (padding of the embedding) are no tokens at all.
    if (types[id] == kTokenControl || types[id] == kTokenUserDefined || types[id] == kTokenUnused) continue;
    w.Key(vocab[id]).Uint(id);
  }
  w.EndObject();
  w.Key("merges").BeginArray();
  for (const std::string& merge : (merges != nullptr ? merges : &kNoMerges)->strings) {
    const size_t space = merge.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 == merge.size() ||
        merge.find(' ', space + 1) != std::string::npos) {
      return Status::InvalidArgument("tokenizer.ggml.merges holds '" + merge.substr(0, 80) +
                                     "', not two tokens separated by one space");
    }
    w.BeginArray().String(std::string_view(merge).substr(0, space)).String(std::string_view(merge).substr(space + 1));
    w.EndArray();
  }
  w.EndArray();
  w.EndObject();
  w.EndObject();
  return w.Take();
}

Result<std::string> GgufTokenizerConfigJson(const GgufHeader& h) {
  const GgufValue* tokens = TokenArray(h, "tokenizer.ggml.tokens");
  if (tokens == nullptr) return Status::InvalidArgument("the GGUF file has no tokenizer.ggml.tokens");
  JsonWriter w;
  w.BeginObject();
  for (auto [key, field] : {std::pair<std::string_view, std::string_view>{"tokenizer.ggml.bos_token_id", "bos_token"},
                            {"tokenizer.ggml.eos_token_id", "eos_token"},
                            {"tokenizer.ggml.padding_token_id", "pad_token"}}) {
    ES_ASSIGN_OR_RETURN(std::string token, SpecialToken(h, key, tokens->strings));
    w.Key(field);
    if (token.empty()) {
      w.Null();
    } else {
      w.String(token);
    }
  }
  auto add_bos = h.GetBool("tokenizer.ggml.add_bos_token");
  w.Key("add_bos_token").Bool(add_bos.ok() && *add_bos);
  if (auto tmpl = h.GetString("tokenizer.chat_template"); tmpl.ok()) w.Key("chat_template").String(*tmpl);
  w.EndObject();
  return w.Take();
}

Result<std::string> GgufDenseTensorHfName(std::string_view name) {
  if (name == "token_embd.weight") return std::string("model.embed_tokens.weight");
  if (name == "output_norm.weight") return std::string("model.norm.weight");
  if (name == "output.weight") return std::string("lm_head.weight");
  constexpr std::string_view kBlock = "blk.";
  if (name.starts_with(kBlock)) {
    std::string_view rest = name.substr(kBlock.size());
    const size_t dot = rest.find('.');
    const std::string_view layer = rest.substr(0, dot);
    const bool digits = !layer.empty() && layer.size() <= 5 &&
                        layer.find_first_not_of("0123456789") == std::string_view::npos &&
                        (layer.size() == 1 || layer[0] != '0');
    if (digits && dot != std::string_view::npos) {
      const std::string_view suffix = rest.substr(dot + 1);
      for (const auto& [gguf, hf] : kLayerTensors) {
        if (suffix == gguf) return "model.layers." + std::string(layer) + "." + std::string(hf);
      }
    }
  }
  return Status::InvalidArgument("GGUF tensor '" + std::string(name.substr(0, 80)) + "' has no Hugging Face name");
}

}  // namespace es
