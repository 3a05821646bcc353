// ModelConfig: the text model's hyper-parameters as the forward pass needs them, read from the config.json a
// model was ingested with (for qwen3_omni_moe, its thinker_config.text_config), with each family's defaults.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "store/base/json.h"
#include "store/base/status.h"

namespace es {

enum class QkNorm : uint8_t {
  kNone,     // Mixtral, Qwen2-MoE
  kPerHead,  // Qwen3: one [head_dim] RMSNorm weight applied to every head of q and of k
  kFull,     // OLMoE: RMSNorm over the whole q ([heads*head_dim]) and k ([kv_heads*head_dim]) projections
};

struct ModelConfig {
  std::string arch;
  uint32_t num_layers = 0;
  uint32_t hidden = 0;
  uint32_t num_heads = 0;
  uint32_t num_kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t vocab = 0;
  uint32_t num_experts = 0;
  uint32_t top_k = 0;
  uint32_t moe_intermediate = 0;
  uint32_t dense_intermediate = 0;       // the MLP of layers that are not MoE
  uint32_t shared_expert_intermediate = 0;  // Qwen2-MoE; 0 when there is no shared expert
  bool norm_topk_prob = true;
  float rms_eps = 1e-6f;
  float rope_theta = 1e6f;
  uint32_t max_positions = 32768;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;
  QkNorm qk_norm = QkNorm::kNone;
  uint32_t decoder_sparse_step = 1;
  std::vector<uint32_t> mlp_only_layers;
  std::vector<int64_t> eos_ids;  // from config.json (generation_config.json may add more)
  int64_t bos_id = -1;

  // As transformers decides it: MoE iff L not in mlp_only_layers and (L+1) % decoder_sparse_step == 0.
  bool IsMoeLayer(uint32_t layer) const;
};

// Parses `config_json` (the whole config.json as ingested) for architecture `arch`.
Result<ModelConfig> ParseModelConfig(const std::string& arch, const std::string& config_json);

}  // namespace es
