// The adapter registry and the helpers the per-family adapters share.
#include "ingest/arch.h"

#include <charconv>

#include "ingest/arch_families.h"

namespace es {

std::string_view ProjectionRoleName(ProjectionRole role) {
  switch (role) {
    case ProjectionRole::kGate: return "gate";
    case ProjectionRole::kUp: return "up";
    case ProjectionRole::kDown: return "down";
  }
  return "unknown";
}

namespace {

const std::vector<const ArchAdapter*>& Registry() {
  static const std::vector<const ArchAdapter*> adapters = {&Qwen3MoeAdapter(), &Qwen3OmniMoeAdapter(), &MixtralAdapter(),
                                                           &OlmoeAdapter(), &Qwen2MoeAdapter()};
  return adapters;
}

std::string SupportedList() {
  std::string out;
  for (auto name : SupportedArchs()) {
    if (!out.empty()) out += ", ";
    out += name;
  }
  return out;
}

}  // namespace

std::vector<std::string_view> SupportedArchs() {
  std::vector<std::string_view> names;
  for (const auto* a : Registry()) names.push_back(a->name());
  return names;
}

Result<const ArchAdapter*> AdapterByName(std::string_view arch) {
  for (const auto* a : Registry()) {
    if (a->name() == arch) return a;
  }
  return Status::NotSupported("unsupported architecture '" + std::string(arch) + "' (supported: " + SupportedList() + ")");
}

Result<const ArchAdapter*> AdapterForConfig(const JsonValue& config) {
  if (!config.is_object()) return Status::InvalidArgument("config.json is not a JSON object");
  const JsonValue* type = config.Find("model_type");
  if (type == nullptr || !type->is_string()) {
    return Status::InvalidArgument("config.json has no string model_type (supported: " + SupportedList() + ")");
  }
  return AdapterByName(type->string_value());
}

Result<uint32_t> ConfigU32(const JsonValue& config, std::string_view field) {
  const JsonValue* v = config.Find(field);
  if (v == nullptr) return Status::InvalidArgument("config is missing \"" + std::string(field) + "\"");
  auto u = v->AsUint64();
  if (!u.ok() || *u > UINT32_MAX) {
    return Status::InvalidArgument("config field \"" + std::string(field) + "\" is not an unsigned 32-bit integer");
  }
  return static_cast<uint32_t>(*u);
}

Result<uint32_t> ConfigU32Or(const JsonValue& config, std::string_view field, uint32_t fallback) {
  if (config.Find(field) == nullptr) return fallback;
  return ConfigU32(config, field);
}

Result<uint32_t> ParseNameIndex(std::string_view& text, uint32_t limit, std::string_view what, std::string_view name) {
  size_t end = 0;
  while (end < text.size() && text[end] >= '0' && text[end] <= '9') ++end;
  std::string_view digits = text.substr(0, end);
  auto bad = [&](std::string_view why) {
    return Status::InvalidArgument("tensor \"" + std::string(name) + "\": " + std::string(what) + " index " +
                                   std::string(why));
  };
  if (digits.empty()) return bad("is missing");
  if (digits.size() > 1 && digits[0] == '0') return bad("has a leading zero");
  uint32_t value = 0;
  auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (ec == std::errc::result_out_of_range) return bad("overflows");
  if (ec != std::errc() || ptr != digits.data() + digits.size()) return bad("is not a number");
  if (value >= limit) {
    return bad(std::to_string(value) + " is beyond the config's " + std::to_string(limit));
  }
  text.remove_prefix(end);
  return value;
}

Result<ModelShape> ParseMoeShape(const JsonValue& config, std::string_view arch, std::string_view experts_field,
                                 std::string_view expert_ffn_field) {
  if (!config.is_object()) return Status::InvalidArgument("the text model config is not a JSON object");
  ModelShape s;
  s.arch = std::string(arch);
  ES_ASSIGN_OR_RETURN(s.num_layers, ConfigU32(config, "num_hidden_layers"));
  ES_ASSIGN_OR_RETURN(s.num_experts, ConfigU32(config, experts_field));
  ES_ASSIGN_OR_RETURN(s.top_k, ConfigU32(config, "num_experts_per_tok"));
  ES_ASSIGN_OR_RETURN(s.hidden_size, ConfigU32(config, "hidden_size"));
  ES_ASSIGN_OR_RETURN(s.moe_intermediate_size, ConfigU32(config, expert_ffn_field));
  ES_ASSIGN_OR_RETURN(s.vocab_size, ConfigU32(config, "vocab_size"));
  if (s.num_layers == 0 || s.num_experts == 0 || s.hidden_size == 0 || s.moe_intermediate_size == 0 ||
      s.vocab_size == 0) {
    return Status::InvalidArgument("config describes an empty model (a layer, expert, hidden or vocab count is 0)");
  }
  if (s.top_k == 0 || s.top_k > s.num_experts) {
    return Status::InvalidArgument("config's num_experts_per_tok must be between 1 and the number of experts");
  }
  JsonWriter w;
  w.Value(config);
  s.text_config_json = w.Take();
  return s;
}

Result<ModelShape> DecoderAdapter::ParseConfig(const JsonValue& config) const {
  return ParseMoeShape(config, family_.name, family_.experts_field, family_.expert_ffn_field);
}

Result<TensorRole> DecoderAdapter::Classify(std::string_view tensor, const ModelShape& shape) const {
  if (tensor == "lm_head.weight") return TensorRole{TensorRole::Kind::kDense, 0, 0, {}, "lm_head.weight", ""};
  return ClassifyDecoderTensor(tensor, "model.", family_.naming, shape);
}

Result<TensorRole> ClassifyDecoderTensor(std::string_view name, std::string_view prefix, const ExpertNaming& naming,
                                         const ModelShape& shape) {
  TensorRole role;
  if (!name.starts_with(prefix)) {
    return Status::InvalidArgument("tensor \"" + std::string(name) + "\" is outside the model (expected prefix \"" +
                                   std::string(prefix) + "\")");
  }
  std::string_view rest = name.substr(prefix.size());
  role.kind = TensorRole::Kind::kDense;
  role.canonical = "model." + std::string(rest);
  constexpr std::string_view kLayers = "layers.";
  if (!rest.starts_with(kLayers)) return role;
  rest.remove_prefix(kLayers.size());
  ES_ASSIGN_OR_RETURN(role.layer, ParseNameIndex(rest, shape.num_layers, "layer", name));
  if (!rest.starts_with('.')) return Status::InvalidArgument("tensor \"" + std::string(name) + "\": malformed name");
  rest.remove_prefix(1);
  std::string experts_prefix = std::string(naming.mlp) + ".experts.";
  if (!rest.starts_with(experts_prefix)) return role;  // attention, norms, router, shared experts: dense
  rest.remove_prefix(experts_prefix.size());
  if (rest == "gate_up_proj") {
    role.kind = TensorRole::Kind::kFusedGateUp;
    return role;
  }
  if (rest == "down_proj") {
    role.kind = TensorRole::Kind::kFusedDown;
    return role;
  }
  ES_ASSIGN_OR_RETURN(role.expert, ParseNameIndex(rest, shape.num_experts, "expert", name));
  if (!rest.starts_with('.')) return Status::InvalidArgument("tensor \"" + std::string(name) + "\": malformed name");
  rest.remove_prefix(1);
  role.kind = TensorRole::Kind::kExpert;
  if (rest == naming.gate) {
    role.projection = ProjectionRole::kGate;
  } else if (rest == naming.up) {
    role.projection = ProjectionRole::kUp;
  } else if (rest == naming.down) {
    role.projection = ProjectionRole::kDown;
  } else {
    return Status::InvalidArgument("tensor \"" + std::string(name) + "\": unknown expert projection \"" +
                                   std::string(rest) + "\"");
  }
  return role;
}

}  // namespace es
