// Metabolic states (docs/cache.md): named presets over three knobs, the cache budget, the experts used per
// token (k) and the prefetch depth. wake, focus and crisis are generation states; rest (recompute profiles and
// trust from recorded usage, compact) and dream (calibration) are named here but run no generation, so they
// have no budget.
//
//   state   k                cache (of the model's expert bytes)   prefetch depth
//   wake    model k / 2      5%                                     0
//   focus   model k          15%                                    1
//   crisis  2 x model k      40%                                    3
//
// Every cache also has a floor of (depth + 2) x k slots: the layer being computed, `depth` layers being
// prefetched, and one layer's worth spare so that a demand miss finds an unpinned slot while prefetches are in
// flight. The cache never exceeds the model's expert count (more slots could never fill). For Qwen3-30B-A3B
// (6,144 experts of 9 MiB, 54 GiB) that is wake 2.7 GiB, focus 8.1 GiB, crisis 21.6 GiB.
// --cache-mb and --prefetch override the preset's cache and depth; k stays the state's.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "store/base/status.h"

namespace es {

enum class MetabolicState : uint8_t { kWake, kFocus, kCrisis, kRest, kDream };
// "wake", "focus", "crisis", "rest", "dream"; InvalidArgument otherwise.
Result<MetabolicState> ParseMetabolicState(std::string_view name);
std::string_view MetabolicStateName(MetabolicState state);
bool IsGenerationState(MetabolicState state);
inline constexpr MetabolicState kDefaultState = MetabolicState::kFocus;

// The preset of a generation state. k = model k * k_num / k_den (at least 1, at most the experts per layer).
struct StatePreset {
  uint32_t k_num;
  uint32_t k_den;
  double cache_fraction;
  uint32_t prefetch_depth;
};
inline constexpr StatePreset kWakePreset = {1, 2, 0.05, 0};
inline constexpr StatePreset kFocusPreset = {1, 1, 0.15, 1};
inline constexpr StatePreset kCrisisPreset = {2, 1, 0.40, 3};
// Layers' worth of k slots beyond the prefetched ones in the cache floor (the computing layer and a spare).
inline constexpr uint32_t kFloorExtraLayers = 2;
// The slots every cache needs at least: (prefetch depth + kFloorExtraLayers) x k.
inline uint64_t CacheFloorSlots(uint32_t prefetch_depth, uint64_t experts_per_token) {
  return static_cast<uint64_t>(prefetch_depth + kFloorExtraLayers) * experts_per_token;
}

// What a budget depends on.
struct StateModel {
  uint32_t top_k = 0;              // the model's experts per token
  uint32_t experts_per_layer = 0;
  uint64_t num_experts = 0;        // experts stored (a partial checkpoint has fewer than layers x per layer)
  uint64_t slot_bytes = 0;         // the largest expert record (ModelExperts::max_record_bytes)
};

struct StateOverrides {
  std::optional<uint64_t> cache_mb = std::nullopt;        // --cache-mb: cache size in MiB (rounded down to whole slots)
  std::optional<uint32_t> prefetch_depth = std::nullopt;  // --prefetch: layers read ahead (0 disables the prefetcher)
};

struct StateBudget {
  MetabolicState state = kDefaultState;
  uint32_t experts_per_token = 0;
  uint32_t cache_slots = 0;
  uint64_t cache_bytes = 0;               // cache_slots x slot_bytes
  uint32_t prefetch_depth = 0;
  uint64_t prefetch_bytes_in_flight = 0;  // depth x k x slot_bytes: one predicted layer per level of depth
};

// InvalidArgument for rest/dream, an empty model, or a --cache-mb too small for one layer's k experts.
Result<StateBudget> ResolveState(MetabolicState state, const StateModel& model, const StateOverrides& overrides = {});

}  // namespace es
