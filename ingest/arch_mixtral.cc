// mixtral (Mixtral-8x7B and the Mixtral layout generally): model.layers.L.block_sparse_moe.experts.E.w1/w2/w3,
// w1 = gate, w3 = up, w2 = down; router block_sparse_moe.gate.weight; expert FFN size is intermediate_size.
#include "ingest/arch_families.h"

namespace es {

const ArchAdapter& MixtralAdapter() {
  static const DecoderAdapter adapter(DecoderFamily{"mixtral", "num_local_experts", "intermediate_size", {"block_sparse_moe", "w1.weight", "w3.weight", "w2.weight"}});
  return adapter;
}

}  // namespace es
