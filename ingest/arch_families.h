// The adapters of the supported families, one definition file each (ingest/arch_<family>.cc).
#pragma once

#include "ingest/arch.h"

namespace es {

const ArchAdapter& Qwen3MoeAdapter();
const ArchAdapter& Qwen3OmniMoeAdapter();
const ArchAdapter& MixtralAdapter();
const ArchAdapter& OlmoeAdapter();
const ArchAdapter& Qwen2MoeAdapter();

// A family in the common Hugging Face decoder layout (`model.layers.L...`, `lm_head.weight`): families differ
// only in the config fields naming the expert count and expert FFN size, and in the expert tensor names.
struct DecoderFamily {
  std::string_view name;
  std::string_view experts_field;
  std::string_view expert_ffn_field;
  ExpertNaming naming;
};

class DecoderAdapter final : public ArchAdapter {
 public:
  explicit constexpr DecoderAdapter(DecoderFamily family) : family_(family) {}
  std::string_view name() const override { return family_.name; }
  Result<ModelShape> ParseConfig(const JsonValue& config) const override;
  Result<TensorRole> Classify(std::string_view tensor, const ModelShape& shape) const override;

 private:
  DecoderFamily family_;
};

inline constexpr ExpertNaming kQwenExpertNaming{"mlp", "gate_proj.weight", "up_proj.weight", "down_proj.weight"};

// Reads the shape fields every family's text config has; families differ only in the names of the expert
// count (num_experts / num_local_experts) and expert FFN size (moe_intermediate_size / intermediate_size).
Result<ModelShape> ParseMoeShape(const JsonValue& text_config, std::string_view arch, std::string_view experts_field,
                                 std::string_view expert_ffn_field);

}  // namespace es
