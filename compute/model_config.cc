// ModelConfig parsing.
#include "compute/model_config.h"

#include <algorithm>
#include <optional>

namespace es {

bool ModelConfig::IsMoeLayer(uint32_t layer) const {
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end()) return false;
  return decoder_sparse_step > 0 && (layer + 1) % decoder_sparse_step == 0;
}

namespace {

Result<uint32_t> U32(const JsonValue& c, std::string_view key, std::optional<uint32_t> fallback = std::nullopt) {
  const JsonValue* v = c.Find(key);
  if (v == nullptr || v->is_null()) {
    if (fallback) return *fallback;
    return Status::InvalidArgument("model config lacks \"" + std::string(key) + "\"");
  }
  auto u = v->AsUint64();
  if (!u.ok() || *u > UINT32_MAX) return Status::InvalidArgument("model config \"" + std::string(key) + "\" is not a count");
  return static_cast<uint32_t>(*u);
}

Result<double> Number(const JsonValue& c, std::string_view key, double fallback) {
  const JsonValue* v = c.Find(key);
  if (v == nullptr || v->is_null()) return fallback;
  auto d = v->AsDouble();
  if (!d.ok()) return Status::InvalidArgument("model config \"" + std::string(key) + "\" is not a number");
  return *d;
}

bool Bool(const JsonValue& c, std::string_view key, bool fallback) {
  const JsonValue* v = c.Find(key);
  return v != nullptr && v->is_bool() ? v->bool_value() : fallback;
}

}  // namespace

Result<ModelConfig> ParseModelConfig(const std::string& arch, const std::string& config_json) {
  auto root = ParseJson(config_json);
  if (!root.ok()) return root.status().WithContext("model config");
  const JsonValue* text = &*root;
  if (arch == "qwen3_omni_moe") {
    const JsonValue* thinker = root->Find("thinker_config");
    text = thinker == nullptr ? nullptr : thinker->Find("text_config");
    if (text == nullptr) return Status::InvalidArgument("qwen3_omni_moe config lacks thinker_config.text_config");
  }
  const JsonValue& c = *text;
  ModelConfig m;
  m.arch = arch;
  const bool mixtral = arch == "mixtral";
  const bool olmoe = arch == "olmoe";
  const bool qwen2 = arch == "qwen2_moe";
  const bool qwen3 = arch == "qwen3_moe" || arch == "qwen3_omni_moe";
  if (!mixtral && !olmoe && !qwen2 && !qwen3) return Status::NotSupported("no forward pass for architecture " + arch);
  ES_ASSIGN_OR_RETURN(m.num_layers, U32(c, "num_hidden_layers"));
  ES_ASSIGN_OR_RETURN(m.hidden, U32(c, "hidden_size"));
  ES_ASSIGN_OR_RETURN(m.num_heads, U32(c, "num_attention_heads"));
  ES_ASSIGN_OR_RETURN(m.num_kv_heads, U32(c, "num_key_value_heads", m.num_heads));
  if (m.num_heads == 0 || m.num_kv_heads == 0 || m.num_heads % m.num_kv_heads != 0) {
    return Status::InvalidArgument("model config: attention heads must be a positive multiple of key/value heads");
  }
  ES_ASSIGN_OR_RETURN(m.head_dim, U32(c, "head_dim", m.hidden / m.num_heads));
  ES_ASSIGN_OR_RETURN(m.vocab, U32(c, "vocab_size"));
  ES_ASSIGN_OR_RETURN(m.num_experts, U32(c, mixtral ? "num_local_experts" : "num_experts"));
  ES_ASSIGN_OR_RETURN(m.top_k, U32(c, "num_experts_per_tok"));
  if (mixtral || olmoe) {
    ES_ASSIGN_OR_RETURN(m.moe_intermediate, U32(c, "intermediate_size"));
    m.dense_intermediate = m.moe_intermediate;
  } else {
    ES_ASSIGN_OR_RETURN(m.moe_intermediate, U32(c, "moe_intermediate_size"));
    ES_ASSIGN_OR_RETURN(m.dense_intermediate, U32(c, "intermediate_size", m.moe_intermediate));
  }
  if (qwen2) {
    ES_ASSIGN_OR_RETURN(m.shared_expert_intermediate, U32(c, "shared_expert_intermediate_size", 0));
  }
  // transformers' defaults: Qwen3-MoE norm_topk_prob=False in the class but True in every released config;
  // Mixtral always renormalises (softmax over the top-k logits); OLMoE and Qwen2-MoE default to False.
  m.norm_topk_prob = mixtral ? true : Bool(c, "norm_topk_prob", false);
  ES_ASSIGN_OR_RETURN(double eps, Number(c, "rms_norm_eps", 1e-6));
  ES_ASSIGN_OR_RETURN(double theta, Number(c, "rope_theta", mixtral ? 1e6 : 10000.0));
  m.rms_eps = static_cast<float>(eps);
  m.rope_theta = static_cast<float>(theta);
  ES_ASSIGN_OR_RETURN(m.max_positions, U32(c, "max_position_embeddings", 32768));
  m.tie_word_embeddings = Bool(c, "tie_word_embeddings", false);
  m.qkv_bias = qwen2 || Bool(c, "attention_bias", false);
  m.qk_norm = qwen3 ? QkNorm::kPerHead : olmoe ? QkNorm::kFull : QkNorm::kNone;
  ES_ASSIGN_OR_RETURN(m.decoder_sparse_step, U32(c, "decoder_sparse_step", 1));
  if (const JsonValue* only = c.Find("mlp_only_layers"); only != nullptr && only->is_array()) {
    for (const auto& v : only->array()) {
      auto u = v.AsUint64();
      if (!u.ok()) return Status::InvalidArgument("model config: mlp_only_layers holds a non-index");
      m.mlp_only_layers.push_back(static_cast<uint32_t>(*u));
    }
  }
  // EOS may be one id or a list; it lives in the text config or at the top level.
  for (const JsonValue* scope : {&c, static_cast<const JsonValue*>(&*root)}) {
    if (const JsonValue* eos = scope->Find("eos_token_id"); eos != nullptr && m.eos_ids.empty()) {
      if (eos->is_array()) {
        for (const auto& v : eos->array()) {
          if (auto i = v.AsInt64(); i.ok()) m.eos_ids.push_back(*i);
        }
      } else if (auto i = eos->AsInt64(); i.ok()) {
        m.eos_ids.push_back(*i);
      }
    }
    if (const JsonValue* bos = scope->Find("bos_token_id"); bos != nullptr && m.bos_id < 0) {
      if (auto i = bos->AsInt64(); i.ok()) m.bos_id = *i;
    }
  }
  if (m.top_k == 0 || m.top_k > m.num_experts) return Status::InvalidArgument("model config: bad num_experts_per_tok");
  if (m.head_dim % 2 != 0) return Status::InvalidArgument("model config: head_dim must be even for RoPE");
  return m;
}

}  // namespace es
