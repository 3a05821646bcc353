// GGUF metadata to Hugging Face config, tokenizer and tensor names (the names llama.cpp's converter maps from).
#include "ingest/gguf_model.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <map>
#include <tuple>
#include <utility>

#include "store/base/json.h"
#include "store/base/utf8.h"

namespace es {
namespace {

constexpr std::string_view kArchKey = "general.architecture";
constexpr std::string_view kGpt2Model = "gpt2";  // byte-level BPE
constexpr std::string_view kSpmModel = "llama";  // SentencePiece BPE with byte fallback (Llama, Mistral, Mixtral)
constexpr std::string_view kSpmSpace = "\xe2\x96\x81";  // U+2581, SentencePiece's space
// tokenizer.ggml.token_type values (llama.cpp's llama_token_type; 6, byte, needs no case of its own).
constexpr int64_t kTokenNormal = 1;
constexpr int64_t kTokenUnknown = 2;
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
constexpr std::array<PreTokenizer, 5> kPreTokenizers = {{
    {"qwen2",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
     true},
    {"llama-bpe",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
     false},
    {"gpt-2", kGpt2Regex, false},
    {"olmo", kGpt2Regex, false},  // OLMo and OLMoE: GPT-NeoX's tokenizer, GPT-2's split
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

// The MoE architectures GGUF carries that have a forward pass here, with what llama.cpp's graph for each fixes
// rather than writes as a key.
struct GgufArch {
  std::string_view gguf;        // general.architecture
  std::string_view model_type;  // the Hugging Face config's
  std::string_view hf_class;
  std::string_view moe_block;   // the Hugging Face module holding router and experts
  bool norm_topk_prob;          // llama.cpp renormalises the top-k weights (qwen3moe, llama) or not
  bool rope_pairs_permuted;     // llama's converter reorders q/k rows for RoPE on adjacent pairs
};
constexpr std::array<GgufArch, 4> kArchs = {{
    {"qwen3moe", "qwen3_moe", "Qwen3MoeForCausalLM", "mlp", true, false},
    {"qwen2moe", "qwen2_moe", "Qwen2MoeForCausalLM", "mlp", false, false},
    {"olmoe", "olmoe", "OlmoeForCausalLM", "mlp", false, false},
    {"llama", "mixtral", "MixtralForCausalLM", "block_sparse_moe", true, true},  // llama with experts
}};

Result<const GgufArch*> ArchNamed(std::string_view arch) {
  for (const GgufArch& a : kArchs) {
    if (a.gguf == arch) return &a;
  }
  return Status::NotSupported("GGUF architecture '" + std::string(arch) + "' is not supported (this build maps " +
                              "qwen3moe, qwen2moe, olmoe and llama with experts)");
}

Result<const GgufArch*> Architecture(const GgufHeader& h) {
  ES_ASSIGN_OR_RETURN(std::string arch, h.GetString(kArchKey));
  return ArchNamed(arch);
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
  if (types == nullptr) return std::vector<int64_t>(n, kTokenNormal);
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


// Length of the UTF-8 sequence `lead` starts (1 for a stray continuation byte, so that splitting never stalls).
size_t Utf8Length(unsigned char lead) {
  if (lead >= 0xF0) return 4;
  if (lead >= 0xE0) return 3;
  if (lead >= 0xC0) return 2;
  return 1;
}

// InvalidArgument naming the first string of `strings` (the array `key`) that is not UTF-8: tokenizer.json holds
// them as JSON strings.
Status CheckUtf8(const std::vector<std::string>& strings, std::string_view key) {
  for (size_t i = 0; i < strings.size(); ++i) {
    if (!IsValidUtf8(strings[i])) return Status::InvalidArgument(std::string(key) + "[" + std::to_string(i) + "] is not UTF-8");
  }
  return Status::Ok();
}

// Whether token id is the last one of its text: a vocabulary that lists a text twice maps it to its last id, as
// llama.cpp's does (tokenizer.json's vocabulary is a map: one id per text).
std::vector<bool> LastOfItsText(const std::vector<std::string>& vocab) {
  std::map<std::string_view, size_t> last;
  for (size_t id = 0; id < vocab.size(); ++id) last[vocab[id]] = id;
  std::vector<bool> out(vocab.size(), false);
  for (const auto& [text, id] : last) out[id] = true;
  return out;
}

// The opening of a tokenizer.json: version, no truncation or padding, and the added tokens: control (3) and
// unknown (2) tokens as special ones, user-defined (4) ones as plain ones.
void BeginTokenizerJson(JsonWriter& w, const std::vector<std::string>& vocab, const std::vector<int64_t>& types) {
  w.BeginObject();
  w.Key("version").String("1.0");
  w.Key("truncation").Null();
  w.Key("padding").Null();
  w.Key("added_tokens").BeginArray();
  for (size_t id = 0; id < vocab.size(); ++id) {
    if (types[id] != kTokenControl && types[id] != kTokenUserDefined && types[id] != kTokenUnknown) continue;
    w.BeginObject().Key("id").Uint(id).Key("content").String(vocab[id]);
    w.Key("single_word").Bool(false).Key("lstrip").Bool(false).Key("rstrip").Bool(false);
    w.Key("normalized").Bool(false).Key("special").Bool(types[id] != kTokenUserDefined).EndObject();
  }
  w.EndArray();
}

// A SentencePiece vocabulary (tokenizer.ggml.model "llama": tokens, scores, types) as the Hugging Face BPE
// tokenizer that transformers converts such a tokenizer to: byte fallback, spaces as U+2581 with one prepended
// (unless tokenizer.ggml.add_space_prefix is false), and merges for every pair of tokens whose concatenation is a
// token, ranked by that token's score, highest first (ties by token id, then by the pair's ids). Merging by the
// score of the result is SentencePiece's own BPE rule, and llama.cpp's.
Result<std::string> SpmTokenizerJson(const GgufHeader& h) {
  const GgufValue* tokens = TokenArray(h, "tokenizer.ggml.tokens");
  if (tokens == nullptr || tokens->strings.size() != tokens->array_size() || tokens->strings.empty()) {
    return Status::InvalidArgument("tokenizer.ggml.tokens is missing or not a list of strings");
  }
  const std::vector<std::string>& vocab = tokens->strings;
  const GgufValue* scores = TokenArray(h, "tokenizer.ggml.scores");
  if (scores == nullptr || scores->floats.size() != vocab.size()) {
    return Status::InvalidArgument("a SentencePiece GGUF tokenizer needs tokenizer.ggml.scores, one per token");
  }
  ES_ASSIGN_OR_RETURN(std::vector<int64_t> types, TokenTypes(h, vocab.size()));
  ES_RETURN_IF_ERROR(CheckUtf8(vocab, "tokenizer.ggml.tokens"));
  const std::vector<bool> last = LastOfItsText(vocab);
  auto unk = h.GetUint("tokenizer.ggml.unknown_token_id");
  auto add_bos = h.GetBool("tokenizer.ggml.add_bos_token");
  auto add_eos = h.GetBool("tokenizer.ggml.add_eos_token");
  auto add_space = h.GetBool("tokenizer.ggml.add_space_prefix");
  auto bos = h.GetUint("tokenizer.ggml.bos_token_id");
  auto eos = h.GetUint("tokenizer.ggml.eos_token_id");
  // llama.cpp's defaults for this tokenizer: a BOS, no EOS, a space prefix.
  const bool with_bos = !add_bos.ok() || *add_bos, with_eos = add_eos.ok() && *add_eos;
  if ((with_bos && (!bos.ok() || *bos >= vocab.size())) || (with_eos && (!eos.ok() || *eos >= vocab.size()))) {
    return Status::InvalidArgument("the GGUF tokenizer adds a BOS or EOS token that it does not name");
  }
  if (unk.ok() && *unk >= vocab.size()) return Status::InvalidArgument("tokenizer.ggml.unknown_token_id is past the vocabulary");

  // The pieces BPE builds from: normal tokens (byte tokens <0xNN> are reached by fallback, specials are added).
  std::map<std::string_view, size_t> pieces;
  for (size_t id = 0; id < vocab.size(); ++id) {
    if ((types[id] == kTokenNormal || types[id] == kTokenUserDefined) && last[id]) pieces.emplace(vocab[id], id);
  }
  struct Merge {
    double score;
    size_t id, left, right;
    std::string_view l, r;
  };
  std::vector<Merge> merges;
  for (size_t id = 0; id < vocab.size(); ++id) {
    const std::string_view t = vocab[id];
    if (types[id] != kTokenNormal || t.empty()) continue;
    for (size_t cut = Utf8Length(static_cast<unsigned char>(t[0])); cut < t.size();
         cut += Utf8Length(static_cast<unsigned char>(t[cut]))) {
      auto l = pieces.find(t.substr(0, cut)), r = pieces.find(t.substr(cut));
      if (l != pieces.end() && r != pieces.end()) merges.push_back({scores->floats[id], id, l->second, r->second, l->first, r->first});
    }
  }
  std::sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) {
    if (a.score != b.score) return a.score > b.score;
    return std::tie(a.id, a.left, a.right) < std::tie(b.id, b.left, b.right);
  });

  JsonWriter w;
  BeginTokenizerJson(w, vocab, types);
  w.Key("normalizer").BeginObject().Key("type").String("Sequence").Key("normalizers").BeginArray();
  if (!add_space.ok() || *add_space) {
    w.BeginObject().Key("type").String("Prepend").Key("prepend").String(kSpmSpace).EndObject();
  }
  w.BeginObject().Key("type").String("Replace").Key("pattern").BeginObject().Key("String").String(" ").EndObject();
  w.Key("content").String(kSpmSpace).EndObject();
  w.EndArray().EndObject();
  w.Key("pre_tokenizer").Null();
  auto special = [&](std::string_view token) {
    w.BeginObject().Key("SpecialToken").BeginObject().Key("id").String(token).Key("type_id").Uint(0).EndObject().EndObject();
  };
  w.Key("post_processor").BeginObject().Key("type").String("TemplateProcessing").Key("single").BeginArray();
  if (with_bos) special(vocab[*bos]);
  w.BeginObject().Key("Sequence").BeginObject().Key("id").String("A").Key("type_id").Uint(0).EndObject().EndObject();
  if (with_eos) special(vocab[*eos]);
  w.EndArray();
  w.Key("special_tokens").BeginObject();
  if (with_bos) {
    w.Key(vocab[*bos]).BeginObject().Key("id").String(vocab[*bos]).Key("ids").BeginArray().Uint(*bos).EndArray();
    w.Key("tokens").BeginArray().String(vocab[*bos]).EndArray().EndObject();
  }
  if (with_eos && (!with_bos || vocab[*eos] != vocab[*bos])) {
    w.Key(vocab[*eos]).BeginObject().Key("id").String(vocab[*eos]).Key("ids").BeginArray().Uint(*eos).EndArray();
    w.Key("tokens").BeginArray().String(vocab[*eos]).EndArray().EndObject();
  }
  w.EndObject().EndObject();
  w.Key("decoder").BeginObject().Key("type").String("Sequence").Key("decoders").BeginArray();
  w.BeginObject().Key("type").String("Replace").Key("pattern").BeginObject().Key("String").String(kSpmSpace).EndObject();
  w.Key("content").String(" ").EndObject();
  w.BeginObject().Key("type").String("ByteFallback").EndObject();
  w.BeginObject().Key("type").String("Fuse").EndObject();
  if (!add_space.ok() || *add_space) {
    w.BeginObject().Key("type").String("Strip").Key("content").String(" ").Key("start").Uint(1).Key("stop").Uint(0).EndObject();
  }
  w.EndArray().EndObject();
  w.Key("model").BeginObject().Key("type").String("BPE").Key("dropout").Null();
  if (unk.ok()) {
    w.Key("unk_token").String(vocab[*unk]);
  } else {
    w.Key("unk_token").Null();
  }
  w.Key("continuing_subword_prefix").Null().Key("end_of_word_suffix").Null();
  w.Key("fuse_unk").Bool(true).Key("byte_fallback").Bool(true).Key("ignore_merges").Bool(false);
  w.Key("vocab").BeginObject();
  for (size_t id = 0; id < vocab.size(); ++id) {
    if (types[id] == kTokenUnused || !last[id]) continue;
    w.Key(vocab[id]).Uint(id);
  }
  w.EndObject();
  w.Key("merges").BeginArray();
  for (const Merge& m : merges) w.BeginArray().String(m.l).String(m.r).EndArray();
  w.EndArray();
  w.EndObject();
  w.EndObject();
  return w.Take();
}
}  // namespace

Result<std::string> GgufConfigJson(const GgufHeader& h) {
  ES_ASSIGN_OR_RETURN(const GgufArch* a, Architecture(h));
  const std::string arch(a->gguf);
  auto u32 = [&](std::string_view key) { return h.GetU32(ArchKey(arch, key)); };
  ES_ASSIGN_OR_RETURN(uint32_t layers, u32("block_count"));
  ES_ASSIGN_OR_RETURN(uint32_t hidden, u32("embedding_length"));
  ES_ASSIGN_OR_RETURN(uint32_t heads, u32("attention.head_count"));
  auto experts = u32("expert_count");
  if (!experts.ok() && !experts.status().IsNotFound()) return experts.status();
  if (!experts.ok() || *experts == 0) {
    return Status::NotSupported("the GGUF " + arch + " model has no experts (" + arch +
                                ".expert_count): a dense model, not a mixture of experts");
  }
  ES_ASSIGN_OR_RETURN(uint32_t top_k, u32("expert_used_count"));
  ES_ASSIGN_OR_RETURN(double eps, h.GetFloat(ArchKey(arch, "attention.layer_norm_rms_epsilon")));
  auto kv_heads = u32("attention.head_count_kv");
  auto head_dim = u32("attention.key_length");
  auto value_dim = u32("attention.value_length");
  auto rope_dims = u32("rope.dimension_count");
  auto ffn = u32("feed_forward_length");
  // qwen2moe and qwen3moe write the experts' width apart from the dense FFN's; llama and olmoe size the experts
  // by feed_forward_length.
  auto expert_ffn = u32("expert_feed_forward_length");
  if (!expert_ffn.ok()) expert_ffn = ffn;
  if (!expert_ffn.ok()) return expert_ffn.status().WithContext("the experts' width");
  auto shared_ffn = u32("expert_shared_feed_forward_length");
  auto context = u32("context_length");
  auto theta = h.GetFloat(ArchKey(arch, "rope.freq_base"));
  if (heads == 0) return Status::InvalidArgument(ArchKey(arch, "attention.head_count") + " is 0");
  const uint32_t dim = head_dim.ok() ? *head_dim : hidden / heads;
  if (value_dim.ok() && *value_dim != dim) {
    return Status::NotSupported("the GGUF model's value heads (" + std::to_string(*value_dim) +
                                ") differ from its key heads (" + std::to_string(dim) + ")");
  }
  if (rope_dims.ok() && *rope_dims != dim) {
    return Status::NotSupported("the GGUF model rotates " + std::to_string(*rope_dims) + " of each head's " +
                                std::to_string(dim) + " dimensions; partial RoPE has no forward pass here");
  }
  if (const GgufValue* scaling = h.Find(ArchKey(arch, "rope.scaling.type")); scaling != nullptr) {
    auto type = h.GetString(ArchKey(arch, "rope.scaling.type"));
    if (!type.ok() || *type != "none") {
      return Status::NotSupported("the GGUF model scales RoPE (" + (type.ok() ? *type : std::string("?")) +
                                  "); RoPE scaling has no forward pass here");
    }
  }
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

  const bool mixtral = a->model_type == "mixtral";
  JsonWriter w;
  w.BeginObject();
  w.Key("architectures").BeginArray().String(a->hf_class).EndArray();
  w.Key("model_type").String(a->model_type);
  w.Key("vocab_size").Uint(vocab);
  w.Key("hidden_size").Uint(hidden);
  w.Key("num_hidden_layers").Uint(layers);
  w.Key("num_attention_heads").Uint(heads);
  w.Key("num_key_value_heads").Uint(kv_heads.ok() ? *kv_heads : heads);
  if (head_dim.ok()) w.Key("head_dim").Uint(*head_dim);
  w.Key(mixtral ? "num_local_experts" : "num_experts").Uint(*experts);
  w.Key("num_experts_per_tok").Uint(top_k);
  if (mixtral || a->model_type == "olmoe") {
    w.Key("intermediate_size").Uint(*expert_ffn);  // these configs size the experts by intermediate_size
  } else {
    w.Key("moe_intermediate_size").Uint(*expert_ffn);
    if (ffn.ok()) w.Key("intermediate_size").Uint(*ffn);
  }
  if (a->model_type == "qwen2_moe") w.Key("shared_expert_intermediate_size").Uint(shared_ffn.ok() ? *shared_ffn : 0);
  w.Key("norm_topk_prob").Bool(a->norm_topk_prob);
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
  if (model == kSpmModel) return SpmTokenizerJson(h);
  if (model != kGpt2Model) {
    return Status::NotSupported("GGUF tokenizer model '" + model + "' is not supported (byte-level BPE, '" +
                                std::string(kGpt2Model) + "', and SentencePiece, '" + std::string(kSpmModel) +
                                "', are)");
  }
  auto pre_name = h.GetString("tokenizer.ggml.pre");
  const std::string pre = pre_name.ok() ? *pre_name : "default";
  const PreTokenizer* pre_tokenizer = nullptr;
  for (const PreTokenizer& p : kPreTokenizers) {
    if (p.name == pre) pre_tokenizer = &p;
  }
  if (pre_tokenizer == nullptr) {
    return Status::NotSupported("GGUF pre-tokenizer '" + pre + "' is not supported (qwen2, llama-bpe, gpt-2 and olmo are)");
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
  ES_RETURN_IF_ERROR(CheckUtf8(vocab, "tokenizer.ggml.tokens"));
  if (merges != nullptr) ES_RETURN_IF_ERROR(CheckUtf8(merges->strings, "tokenizer.ggml.merges"));
  const std::vector<bool> last = LastOfItsText(vocab);

  JsonWriter w;
  BeginTokenizerJson(w, vocab, types);
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
    if (types[id] == kTokenControl || types[id] == kTokenUserDefined || types[id] == kTokenUnknown ||
        types[id] == kTokenUnused || !last[id]) {
      continue;
    }
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
  ES_RETURN_IF_ERROR(CheckUtf8(tokens->strings, "tokenizer.ggml.tokens"));
  JsonWriter w;
  w.BeginObject();
  for (auto [key, field] : {std::pair<std::string_view, std::string_view>{"tokenizer.ggml.bos_token_id", "bos_token"},
                            {"tokenizer.ggml.eos_token_id", "eos_token"},
                            {"tokenizer.ggml.padding_token_id", "pad_token"},
                            {"tokenizer.ggml.unknown_token_id", "unk_token"}}) {
    ES_ASSIGN_OR_RETURN(std::string token, SpecialToken(h, key, tokens->strings));
    w.Key(field);
    if (token.empty()) {
      w.Null();
    } else {
      w.String(token);
    }
  }
  // llama.cpp adds a BOS by default for SentencePiece vocabularies only.
  auto add_bos = h.GetBool("tokenizer.ggml.add_bos_token");
  auto model = h.GetString("tokenizer.ggml.model");
  w.Key("add_bos_token").Bool(add_bos.ok() ? *add_bos : model.ok() && *model == kSpmModel);
  if (auto tmpl = h.GetString("tokenizer.chat_template"); tmpl.ok()) {
    if (!IsValidUtf8(*tmpl)) return Status::InvalidArgument("tokenizer.chat_template is not UTF-8");
    w.Key("chat_template").String(*tmpl);
  }
  w.EndObject();
  return w.Take();
}

Result<std::string> GgufDenseTensorHfName(std::string_view arch, std::string_view name) {
  ES_ASSIGN_OR_RETURN(const GgufArch* a, ArchNamed(arch));
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
      const std::string prefix = "model.layers." + std::string(layer) + ".";
      if (suffix == "ffn_gate_inp.weight") return prefix + std::string(a->moe_block) + ".gate.weight";
      for (const auto& [gguf, hf] : kLayerTensors) {
        if (suffix == gguf) return prefix + std::string(hf);
      }
      for (std::string_view legacy : {"ffn_gate.", "ffn_up.", "ffn_down."}) {
        if (suffix.starts_with(legacy) && suffix.size() > legacy.size() &&
            std::isdigit(static_cast<unsigned char>(suffix[legacy.size()]))) {
          return Status::NotSupported("GGUF tensor '" + std::string(name.substr(0, 80)) +
                                      "' is one expert of the per-expert layout of files converted before April "
                                      "2024, which llama.cpp no longer loads either; convert the model again");
        }
      }
    }
  }
  return Status::InvalidArgument("GGUF tensor '" + std::string(name.substr(0, 80)) + "' has no Hugging Face name");
}

Result<uint32_t> GgufPermutedHeads(const GgufHeader& h, std::string_view name) {
  ES_ASSIGN_OR_RETURN(const GgufArch* a, Architecture(h));
  if (!a->rope_pairs_permuted || !name.starts_with("blk.")) return 0u;
  const std::string arch(a->gguf);
  ES_ASSIGN_OR_RETURN(uint32_t heads, h.GetU32(ArchKey(arch, "attention.head_count")));
  if (name.ends_with(".attn_q.weight") || name.ends_with(".attn_q.bias")) return heads;
  if (name.ends_with(".attn_k.weight") || name.ends_with(".attn_k.bias")) {
    auto kv = h.GetU32(ArchKey(arch, "attention.head_count_kv"));
    return kv.ok() ? *kv : heads;
  }
  return 0u;
}

}  // namespace es
