// qwen2_moe (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): routed experts as in qwen3_moe plus a shared expert per layer
// (mlp.shared_expert.{gate,up,down}_proj.weight, always active, scaled by sigmoid(mlp.shared_expert_gate.weight x)).
// The shared expert runs for every token, so it is stored as dense tensors and stays resident.
#include "ingest/arch_families.h"

namespace es {
namespace {

constexpr ExpertNaming kQwenNaming{"mlp", "gate_proj.weight", "up_proj.weight", "down_proj.weight"};

class Qwen2Moe final : public ArchAdapter {
 public:
  std::string_view name() const override { return "qwen2_moe"; }
  Result<ModelShape> ParseConfig(const JsonValue& config) const override {
    return ParseMoeShape(config, name(), "num_experts", "moe_intermediate_size");
  }
  Result<TensorRole> Classify(std::string_view tensor, const ModelShape& shape) const override {
    if (tensor == "lm_head.weight") return TensorRole{TensorRole::Kind::kDense, 0, 0, {}, "lm_head.weight", ""};
    return ClassifyDecoderTensor(tensor, "model.", kQwenNaming, shape);
  }
};

}  // namespace

const ArchAdapter& Qwen2MoeAdapter() {
  static const Qwen2Moe adapter;
  return adapter;
}

}  // namespace es
