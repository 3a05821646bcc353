// mixtral (Mixtral-8x7B and the Mixtral layout generally): model.layers.L.block_sparse_moe.experts.E.w1/w2/w3,
// w1 = gate, w3 = up, w2 = down; router block_sparse_moe.gate.weight; expert FFN size is intermediate_size.
#include "ingest/arch_families.h"

namespace es {
namespace {

constexpr ExpertNaming kMixtralNaming{"block_sparse_moe", "w1.weight", "w3.weight", "w2.weight"};

class Mixtral final : public ArchAdapter {
 public:
  std::string_view name() const override { return "mixtral"; }

  Result<ModelShape> ParseConfig(const JsonValue& config) const override {
    return ParseMoeShape(config, name(), "num_local_experts", "intermediate_size");
  }

  Result<TensorRole> Classify(std::string_view tensor, const ModelShape& shape) const override {
    if (tensor == "lm_head.weight") return TensorRole{TensorRole::Kind::kDense, 0, 0, {}, "lm_head.weight", ""};
    return ClassifyDecoderTensor(tensor, "model.", kMixtralNaming, shape);
  }
};

}  // namespace

const ArchAdapter& MixtralAdapter() {
  static const Mixtral adapter;
  return adapter;
}

}  // namespace es
