// Expert selection policies (RuntimeConfig::routing, docs/metadata.md): `exact` is the model's own router (no policy
// function: the forward pass's RouterTopK, bit-faithful); `trust` and `cache-aware` are RoutingPolicyFns that
// pick k experts from the router's full softmax row. Both keep the router's probabilities as mixing weights
// (renormalised over the picked experts when the model normalises its top-k), so they change which experts run,
// never how their outputs are mixed. Definitions and defaults: docs/metadata.md. A policy function keeps state
// between calls (it is not thread-safe); one forward pass uses it at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

#include "compute/model.h"
#include "store/base/status.h"

namespace es {

enum class RoutingKind : uint8_t { kExact, kTrust, kCacheAware };
// "exact", "trust", "cache-aware"; InvalidArgument otherwise.
Result<RoutingKind> ParseRoutingKind(std::string_view name);
std::string_view RoutingKindName(RoutingKind kind);

// The trust blend: score = router*r + exploration*surprise*novelty + reward*reward*trust + focus*f.
struct TrustRoutingWeights {
  double router = 0.5;
  double exploration = 0.2;  // weight of surprise x novelty
  double reward = 0.2;       // weight of reward x trust
  double focus = 0.1;
};
// "r,x,w,f": four non-negative numbers.
Result<TrustRoutingWeights> ParseTrustRoutingWeights(std::string_view text);

// What the trust policy knows of each expert, indexed by dense key layer * experts_per_layer + expert.
// Every vector is either empty (neutral for all) or holds one value per key.
struct TrustRoutingInputs {
  uint32_t layers = 0;
  uint32_t experts_per_layer = 0;
  bool normalize = true;                // the model's norm_topk_prob
  std::vector<double> trust;            // trust record's trust in [0, 1]; kNeutralEvidence where uncalibrated
  std::vector<double> success_rate;     // success_count / activation_count; kNeutralEvidence without usage
  std::vector<uint64_t> activations;    // recorded activation counts (novelty); this session's add to them
  std::vector<double> domain_lift;      // lift for the focus domain (--focus-domain); empty: focus = continuity
};
// What an expert without a record gets for trust and reward: no evidence either way.
inline constexpr double kNeutralEvidence = 0.5;

RoutingPolicyFn MakeTrustRouting(TrustRoutingInputs inputs, const TrustRoutingWeights& weights);

// Prefers resident experts: starting from the router's top-k, each picked expert that is not resident (from the
// least probable up) is replaced by the most probable resident, unpicked expert whose probability is at least
// its own minus `margin` (absolute, in router probability). `resident(layer, expert)` is asked at routing time.
inline constexpr double kDefaultCacheAwareMargin = 0.05;
RoutingPolicyFn MakeCacheAwareRouting(std::function<bool(uint32_t layer, uint32_t expert)> resident, bool normalize,
                                      double margin);

}  // namespace es
