// qwen2_moe, as transformers' modeling_qwen2_moe.py: attention with q/k/v biases, then routed experts plus a
// shared expert gated by sigmoid(shared_expert_gate h).
#include "compute/model.h"

namespace es {
namespace {

class Qwen2Moe final : public ArchGraph {
 public:
  Status Layer(Model::LayerOps& ops) const override {
    ES_RETURN_IF_ERROR(ops.Attention({.qk_norm = QkNorm::kNone, .qkv_bias = true}));
    bool shared = ops.config().shared_expert_intermediate > 0;
    return ops.config().IsMoeLayer(ops.layer()) ? ops.Moe(shared) : ops.DenseMlp();
  }
};

}  // namespace

const ArchGraph& Qwen2MoeGraph() {
  static const Qwen2Moe graph;
  return graph;
}

}  // namespace es
