// qwen2_moe (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): routed experts as in qwen3_moe plus a shared expert per layer
// (mlp.shared_expert.{gate,up,down}_proj.weight, always active, scaled by sigmoid(mlp.shared_expert_gate.weight x)).
// The shared expert runs for every token, so it is stored as dense tensors and stays resident.
#include "ingest/arch_families.h"

namespace es {

const ArchAdapter& Qwen2MoeAdapter() {
  static const DecoderAdapter adapter(DecoderFamily{"qwen2_moe", "num_experts", "moe_intermediate_size", kQwenExpertNaming});
  return adapter;
}

}  // namespace es
