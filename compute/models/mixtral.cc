// mixtral, as transformers' modeling_mixtral.py: pre-norm attention without q/k norms, then the sparse MoE block
// whose router softmaxes the top-k logits (equal to renormalising the top-k of the full softmax).
#include "compute/model.h"

namespace es {
namespace {

class Mixtral final : public ArchGraph {
 public:
  Status Layer(Model::LayerOps& ops) const override {
    ES_RETURN_IF_ERROR(ops.Attention({.qk_norm = QkNorm::kNone, .qkv_bias = ops.config().qkv_bias}));
    return ops.Moe(/*shared_expert=*/false);
  }
};

}  // namespace

const ArchGraph& MixtralGraph() {
  static const Mixtral graph;
  return graph;
}

}  // namespace es
