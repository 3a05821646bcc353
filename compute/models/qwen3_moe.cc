// qwen3_moe (and the qwen3_omni_moe thinker, which has the same text model), as transformers'
// modeling_qwen3_moe.py: pre-norm attention with per-head q/k RMSNorm before RoPE, then a sparse MoE block
// (or a dense MLP where mlp_only_layers / decoder_sparse_step say so).
#include "compute/model.h"

namespace es {
namespace {

class Qwen3Moe final : public ArchGraph {
 public:
  Status Layer(Model::LayerOps& ops) const override {
    ES_RETURN_IF_ERROR(ops.Attention({.qk_norm = QkNorm::kPerHead, .qkv_bias = ops.config().qkv_bias}));
    return ops.config().IsMoeLayer(ops.layer()) ? ops.Moe(/*shared_expert=*/false) : ops.DenseMlp();
  }
};

}  // namespace

const ArchGraph& Qwen3MoeGraph() {
  static const Qwen3Moe graph;
  return graph;
}

}  // namespace es
