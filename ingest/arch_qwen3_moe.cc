// qwen3_moe (Qwen3-30B-A3B, Qwen3-235B-A22B): model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight,
// router model.layers.L.mlp.gate.weight, untied lm_head.weight unless tie_word_embeddings.
#include "ingest/arch_families.h"

namespace es {

namespace {

constexpr ExpertNaming kQwenNaming{"mlp", "gate_proj.weight", "up_proj.weight", "down_proj.weight"};

class Qwen3Moe final : public ArchAdapter {
 public:
  std::string_view name() const override { return "qwen3_moe"; }
  Result<ModelShape> ParseConfig(const JsonValue& config) const override {
    return ParseMoeShape(config, name(), "num_experts", "moe_intermediate_size");
  }
  Result<TensorRole> Classify(std::string_view tensor, const ModelShape& shape) const override {
    if (tensor == "lm_head.weight") return TensorRole{TensorRole::Kind::kDense, 0, 0, {}, "lm_head.weight", ""};
    return ClassifyDecoderTensor(tensor, "model.", kQwenNaming, shape);
  }
};

}  // namespace

const ArchAdapter& Qwen3MoeAdapter() {
  static const Qwen3Moe adapter;
  return adapter;
}

}  // namespace es
