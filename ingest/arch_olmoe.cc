// olmoe (OLMoE-1B-7B): model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight, router mlp.gate.weight,
// q_norm/k_norm over the whole projection; the expert FFN size is intermediate_size.
#include "ingest/arch_families.h"

namespace es {

const ArchAdapter& OlmoeAdapter() {
  static const DecoderAdapter adapter(DecoderFamily{"olmoe", "num_experts", "intermediate_size", kQwenExpertNaming});
  return adapter;
}

}  // namespace es
