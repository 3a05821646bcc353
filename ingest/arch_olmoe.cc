// olmoe (OLMoE-1B-7B): model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight, router mlp.gate.weight,
// q_norm/k_norm over the whole projection; the expert FFN size is intermediate_size.
#include "ingest/arch_families.h"

namespace es {
namespace {

constexpr ExpertNaming kOlmoeNaming{"mlp", "gate_proj.weight", "up_proj.weight", "down_proj.weight"};

class Olmoe final : public ArchAdapter {
 public:
  std::string_view name() const override { return "olmoe"; }

  Result<ModelShape> ParseConfig(const JsonValue& config) const override {
    return ParseMoeShape(config, name(), "num_experts", "intermediate_size");
  }

  Result<TensorRole> Classify(std::string_view tensor, const ModelShape& shape) const override {
    if (tensor == "lm_head.weight") return TensorRole{TensorRole::Kind::kDense, 0, 0, {}, "lm_head.weight", ""};
    return ClassifyDecoderTensor(tensor, "model.", kOlmoeNaming, shape);
  }
};

}  // namespace

const ArchAdapter& OlmoeAdapter() {
  static const Olmoe adapter;
  return adapter;
}

}  // namespace es
