// Resolving a metabolic state's preset against a model's shape and the user's overrides.
#include "cache/states.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace es {

namespace {
constexpr uint64_t kMiB = 1ull << 20;
constexpr MetabolicState kAllStates[] = {MetabolicState::kWake, MetabolicState::kFocus, MetabolicState::kCrisis,
                                         MetabolicState::kRest, MetabolicState::kDream};
}  // namespace

std::string_view MetabolicStateName(MetabolicState state) {
  switch (state) {
    case MetabolicState::kWake: return "wake";
    case MetabolicState::kFocus: return "focus";
    case MetabolicState::kCrisis: return "crisis";
    case MetabolicState::kRest: return "rest";
    case MetabolicState::kDream: return "dream";
  }
  return "unknown";
}

Result<MetabolicState> ParseMetabolicState(std::string_view name) {
  for (MetabolicState s : kAllStates) {
    if (MetabolicStateName(s) == name) return s;
  }
  return Status::InvalidArgument("unknown state '" + std::string(name) + "' (expected wake, focus or crisis; rest and "
                                 "dream are maintenance states)");
}

bool IsGenerationState(MetabolicState state) {
  return state == MetabolicState::kWake || state == MetabolicState::kFocus || state == MetabolicState::kCrisis;
}

Result<StateBudget> ResolveState(MetabolicState state, const StateModel& model, const StateOverrides& overrides) {
  const StatePreset* preset = nullptr;
  switch (state) {
    case MetabolicState::kWake: preset = &kWakePreset; break;
    case MetabolicState::kFocus: preset = &kFocusPreset; break;
    case MetabolicState::kCrisis: preset = &kCrisisPreset; break;
    case MetabolicState::kRest:
      return Status::InvalidArgument("rest is not a generation state: it recomputes profiles and trust from recorded "
                                     "usage and compacts the store");
    case MetabolicState::kDream:
      return Status::InvalidArgument("dream is not a generation state: it is calibration");
  }
  if (model.top_k == 0 || model.experts_per_layer == 0 || model.num_experts == 0 || model.slot_bytes == 0) {
    return Status::InvalidArgument("a state needs a model with experts, top-k and a slot size");
  }
  StateBudget b;
  b.state = state;
  b.experts_per_token = std::clamp<uint32_t>(model.top_k * preset->k_num / preset->k_den, 1, model.experts_per_layer);
  b.prefetch_depth = overrides.prefetch_depth.value_or(preset->prefetch_depth);
  const uint64_t k = b.experts_per_token;
  uint64_t slots = 0;
  if (overrides.cache_mb) {
    slots = *overrides.cache_mb * kMiB / model.slot_bytes;
    if (slots < k) {
      return Status::InvalidArgument("`cache_mb` " + std::to_string(*overrides.cache_mb) + " holds " +
                                     std::to_string(slots) + " experts; a layer needs " + std::to_string(k) +
                                     " at once (at least " + std::to_string((k * model.slot_bytes + kMiB - 1) / kMiB) +
                                     " MiB)");
    }
  } else {
    const uint64_t floor = CacheFloorSlots(b.prefetch_depth, k);
    const uint64_t share = static_cast<uint64_t>(std::ceil(preset->cache_fraction * static_cast<double>(model.num_experts)));
    slots = std::max(floor, share);
  }
  slots = std::min<uint64_t>(slots, model.num_experts);
  b.cache_slots = static_cast<uint32_t>(slots);
  b.cache_bytes = slots * model.slot_bytes;
  b.prefetch_bytes_in_flight = b.prefetch_depth * k * model.slot_bytes;
  return b;
}

}  // namespace es
