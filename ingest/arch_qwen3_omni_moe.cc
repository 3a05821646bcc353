// qwen3_omni_moe (Qwen3-Omni-30B-A3B): the generation model is the thinker's text model, laid out as qwen3_moe
// under thinker.model. with thinker.lm_head, its config under thinker_config.text_config. Every other tensor
// (talker, vision encoder, audio encoder, code2wav) is a named component, stored but loaded only when asked.
#include "ingest/arch_families.h"

namespace es {
namespace {

constexpr std::string_view kThinkerModel = "thinker.model.";

class Qwen3OmniMoe final : public ArchAdapter {
 public:
  std::string_view name() const override { return "qwen3_omni_moe"; }

  Result<ModelShape> ParseConfig(const JsonValue& config) const override {
    const JsonValue* thinker = config.Find("thinker_config");
    const JsonValue* text = thinker == nullptr ? nullptr : thinker->Find("text_config");
    if (text == nullptr) return Status::InvalidArgument("config.json has no thinker_config.text_config");
    return ParseMoeShape(*text, name(), "num_experts", "moe_intermediate_size");
  }

  Result<TensorRole> Classify(std::string_view tensor, const ModelShape& shape) const override {
    if (tensor == "thinker.lm_head.weight") {
      return TensorRole{TensorRole::Kind::kDense, 0, 0, {}, "lm_head.weight", ""};
    }
    if (tensor.starts_with(kThinkerModel)) return ClassifyDecoderTensor(tensor, kThinkerModel, kQwenExpertNaming, shape);
    TensorRole role;
    role.kind = TensorRole::Kind::kComponent;
    role.canonical = std::string(tensor);
    if (tensor.starts_with("thinker.visual.")) {
      role.component = "vision";
    } else if (tensor.starts_with("thinker.audio_tower.")) {
      role.component = "audio";
    } else {
      size_t dot = tensor.find('.');
      role.component = std::string(tensor.substr(0, dot));  // "talker", "code2wav", "thinker", ...
    }
    if (role.component.empty()) return Status::InvalidArgument("tensor \"" + std::string(tensor) + "\": empty component");
    return role;
  }
};

}  // namespace

const ArchAdapter& Qwen3OmniMoeAdapter() {
  static const Qwen3OmniMoe adapter;
  return adapter;
}

}  // namespace es
