// qwen3_moe (Qwen3-30B-A3B, Qwen3-235B-A22B): model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight,
// router model.layers.L.mlp.gate.weight, untied lm_head.weight unless tie_word_embeddings.
#include "ingest/arch_families.h"

namespace es {

const ArchAdapter& Qwen3MoeAdapter() {
  static const DecoderAdapter adapter(DecoderFamily{"qwen3_moe", "num_experts", "moe_intermediate_size", kQwenExpertNaming});
  return adapter;
}

}  // namespace es
