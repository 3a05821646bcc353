// olmoe, as transformers' modeling_olmoe.py: q and k RMSNorm over the whole projection (not per head) before
// RoPE, then the sparse MoE block (norm_topk_prob false by default).
#include "compute/model.h"

namespace es {
namespace {

class Olmoe final : public ArchGraph {
 public:
  Status Layer(Model::LayerOps& ops) const override {
    ES_RETURN_IF_ERROR(ops.Attention({.qk_norm = QkNorm::kFull, .qkv_bias = ops.config().qkv_bias}));
    return ops.Moe(/*shared_expert=*/false);
  }
};

}  // namespace

const ArchGraph& OlmoeGraph() {
  static const Olmoe graph;
  return graph;
}

}  // namespace es
