// Architecture adapters: one per model family (one .cc file each). An adapter reads the family's config.json
// into a ModelShape and maps every checkpoint tensor name to its role: an expert projection (layer, expert,
// gate/up/down), a fused tensor holding every expert of a layer, a dense tensor of the generation model (under
// a canonical name that compute/ looks up), or a tensor of another component (talker, vision, audio), kept
// under its own name and loaded only when asked for. Adapters are stateless and thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "store/base/json.h"
#include "store/base/status.h"

namespace es {

// What generation needs to know about the text model, read from config.json.
struct ModelShape {
  std::string arch;                  // the adapter's name: "qwen3_moe", "mixtral", ...
  uint32_t num_layers = 0;
  uint32_t num_experts = 0;          // routed experts per MoE layer
  uint32_t top_k = 0;
  uint32_t hidden_size = 0;
  uint32_t moe_intermediate_size = 0;
  uint32_t vocab_size = 0;
  std::string text_config_json;      // the text model's config object, serialised (compute/ reads the rest)
};

enum class ProjectionRole : uint8_t { kGate, kUp, kDown };
std::string_view ProjectionRoleName(ProjectionRole role);

struct TensorRole {
  enum class Kind : uint8_t {
    kExpert,         // one projection of one expert
    kFusedGateUp,    // [E, 2I, H]: every expert's gate (rows 0..I) and up (rows I..2I) of one layer
    kFusedDown,      // [E, H, I]: every expert's down projection of one layer
    kDense,          // a tensor of the generation model, stored as its own record
    kComponent,      // a tensor of another component (talker, vision, audio, ...)
  };
  Kind kind = Kind::kDense;
  uint32_t layer = 0;
  uint32_t expert = 0;
  ProjectionRole projection = ProjectionRole::kGate;
  std::string canonical;   // dense: the name compute/ uses; component: the source name
  std::string component;   // "" for the generation model
};

class ArchAdapter {
 public:
  virtual ~ArchAdapter() = default;
  virtual std::string_view name() const = 0;
  // Reads the text model's shape. InvalidArgument naming the missing or malformed field.
  virtual Result<ModelShape> ParseConfig(const JsonValue& config) const = 0;
  // Classifies a tensor name. Indices in names are checked against `shape` (a layer or expert index that
  // overflows or lies beyond the config is InvalidArgument).
  virtual Result<TensorRole> Classify(std::string_view name, const ModelShape& shape) const = 0;
};

// The adapter for config.json's model_type (also recognised from "architectures"). An unknown architecture is
// NotSupported, listing the supported ones.
Result<const ArchAdapter*> AdapterForConfig(const JsonValue& config);
Result<const ArchAdapter*> AdapterByName(std::string_view arch);
std::vector<std::string_view> SupportedArchs();

// ---- helpers shared by the adapters ---------------------------------------------------------------------

// Reads a required unsigned integer field of a config object (InvalidArgument if missing, not an integer, or
// beyond uint32).
Result<uint32_t> ConfigU32(const JsonValue& config, std::string_view field);
// Like ConfigU32 but returns `fallback` when the field is absent.
Result<uint32_t> ConfigU32Or(const JsonValue& config, std::string_view field, uint32_t fallback);

// Parses a decimal index at the start of `text` (up to the next '.'), rejecting empty, non-digit, leading-zero
// and overflowing values and anything >= limit. `what` names it in errors ("layer", "expert").
Result<uint32_t> ParseNameIndex(std::string_view& text, uint32_t limit, std::string_view what, std::string_view name);

// The common Hugging Face decoder layout shared by qwen3_moe, qwen2_moe, olmoe and mixtral:
// `<prefix>layers.L.<mlp>.experts.E.<proj>` with per-family projection names. Returns true and fills `role`
// when `rest` (the name after `<prefix>layers.`) is an expert projection.
struct ExpertNaming {
  std::string_view mlp;   // "mlp" or "block_sparse_moe"
  std::string_view gate;  // "gate_proj.weight" or "w1.weight"
  std::string_view up;    // "up_proj.weight" or "w3.weight"
  std::string_view down;  // "down_proj.weight" or "w2.weight"
};
Result<TensorRole> ClassifyDecoderTensor(std::string_view name, std::string_view prefix, const ExpertNaming& naming,
                                         const ModelShape& shape);

}  // namespace es
