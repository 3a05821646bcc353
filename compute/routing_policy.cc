// Routing policies: trust (the seed blend) and cache-aware.
#include "compute/routing_policy.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "store/metadata.h"

namespace es {

namespace {

// Writes the chosen experts with their router probabilities as weights, renormalised when the model does.
void WriteWeights(std::span<const float> probs, bool normalize, std::span<const int32_t> chosen,
                  std::span<int32_t> experts, std::span<float> weights) {
  double sum = 0;
  for (int32_t e : chosen) sum += probs[static_cast<size_t>(e)];
  for (size_t j = 0; j < chosen.size(); ++j) {
    experts[j] = chosen[j];
    double p = probs[static_cast<size_t>(chosen[j])];
    weights[j] = static_cast<float>(normalize && sum > 0 ? p / sum : p);
  }
}

// The indices of the k largest values, largest first, the lower index first among equals (as RouterTopK).
std::vector<int32_t> TopK(std::span<const double> scores, size_t k) {
  std::vector<int32_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(), [&](int32_t a, int32_t b) {
    return scores[static_cast<size_t>(a)] != scores[static_cast<size_t>(b)] ? scores[static_cast<size_t>(a)] > scores[static_cast<size_t>(b)] : a < b;
  });
  order.resize(k);
  return order;
}

}  // namespace

Result<RoutingKind> ParseRoutingKind(std::string_view name) {
  if (name == "exact") return RoutingKind::kExact;
  if (name == "trust") return RoutingKind::kTrust;
  if (name == "cache-aware") return RoutingKind::kCacheAware;
  return Status::InvalidArgument("unknown routing policy '" + std::string(name) + "' (exact, trust or cache-aware)");
}

std::string_view RoutingKindName(RoutingKind kind) {
  switch (kind) {
    case RoutingKind::kExact: return "exact";
    case RoutingKind::kTrust: return "trust";
    case RoutingKind::kCacheAware: return "cache-aware";
  }
  return "exact";
}

Result<TrustRoutingWeights> ParseTrustRoutingWeights(std::string_view text) {
  constexpr size_t kTerms = 4;
  ES_ASSIGN_OR_RETURN(std::vector<double> v,
                      ParseWeightList(text, kTerms, "routing weights must be four non-negative numbers r,x,w,f"));
  return TrustRoutingWeights{v[0], v[1], v[2], v[3]};
}

RoutingPolicyFn MakeTrustRouting(TrustRoutingInputs inputs, const TrustRoutingWeights& w) {
  struct State {
    TrustRoutingInputs in;
    std::vector<std::vector<int32_t>> previous;  // per layer: the experts picked for the previous token
  };
  auto st = std::make_shared<State>();
  st->in = std::move(inputs);
  st->previous.resize(st->in.layers);
  const size_t keys = static_cast<size_t>(st->in.layers) * st->in.experts_per_layer;
  if (st->in.activations.size() != keys) st->in.activations.assign(keys, 0);
  return [st, w](uint32_t layer, std::span<const float> probs, size_t k, std::span<int32_t> experts,
                 std::span<float> weights) {
    const TrustRoutingInputs& in = st->in;
    const size_t E = probs.size();
    const size_t base = static_cast<size_t>(layer) * in.experts_per_layer;
    auto value = [&](const std::vector<double>& v, size_t e) {
      return v.empty() || base + e >= v.size() ? kNeutralEvidence : std::clamp(v[base + e], 0.0, 1.0);
    };
    // router: probability relative to the router's favourite, so the top pick scores 1.
    double p_max = *std::max_element(probs.begin(), probs.end());
    // surprise: the router's normalised entropy, 0 when it is certain, 1 when it is uniform.
    double entropy = 0;
    for (float p : probs) {
      if (p > 0) entropy -= p * std::log(static_cast<double>(p));
    }
    double surprise = E > 1 ? std::clamp(entropy / std::log(static_cast<double>(E)), 0.0, 1.0) : 0.0;
    // novelty: 1 - activations / the layer's most activated expert's.
    uint64_t most = 0;
    for (size_t e = 0; e < E && base + e < st->in.activations.size(); ++e) most = std::max(most, st->in.activations[base + e]);
    // focus: lift for the focus domain relative to the layer's highest, else continuity with the previous token.
    double lift_max = 0;
    if (!in.domain_lift.empty()) {
      for (size_t e = 0; e < E && base + e < in.domain_lift.size(); ++e) lift_max = std::max(lift_max, in.domain_lift[base + e]);
    }
    static const std::vector<int32_t> kNone;
    const std::vector<int32_t>& prev = layer < st->previous.size() ? st->previous[layer] : kNone;
    std::vector<double> score(E);
    for (size_t e = 0; e < E; ++e) {
      double router = p_max > 0 ? probs[e] / p_max : 0;
      double novelty = most > 0 && base + e < st->in.activations.size()
                           ? 1.0 - static_cast<double>(st->in.activations[base + e]) / static_cast<double>(most)
                           : 1.0;
      double reward = value(in.success_rate, e);
      double trust = value(in.trust, e);
      double focus = 0;
      if (!in.domain_lift.empty()) {
        focus = lift_max > 0 && base + e < in.domain_lift.size() ? std::max(0.0, in.domain_lift[base + e]) / lift_max : 0;
      } else {
        focus = std::find(prev.begin(), prev.end(), static_cast<int32_t>(e)) != prev.end() ? 1.0 : 0.0;
      }
      score[e] = w.router * router + w.exploration * surprise * novelty + w.reward * reward * trust + w.focus * focus;
    }
    std::vector<int32_t> chosen = TopK(score, k);
    WriteWeights(probs, in.normalize, chosen, experts, weights);
    if (layer < st->previous.size()) st->previous[layer] = chosen;
    for (int32_t e : chosen) {
      if (base + static_cast<size_t>(e) < st->in.activations.size()) ++st->in.activations[base + static_cast<size_t>(e)];
    }
  };
}

RoutingPolicyFn MakeCacheAwareRouting(std::function<bool(uint32_t layer, uint32_t expert)> resident, bool normalize,
                                      double margin) {
  return [resident = std::move(resident), normalize, margin](uint32_t layer, std::span<const float> probs, size_t k,
                                                             std::span<int32_t> experts, std::span<float> weights) {
    const size_t E = probs.size();
    std::vector<double> p(probs.begin(), probs.end());
    std::vector<int32_t> chosen = TopK(p, k);
    std::vector<bool> picked(E, false), is_resident(E, false);
    for (int32_t e : chosen) picked[static_cast<size_t>(e)] = true;
    for (size_t e = 0; e < E; ++e) is_resident[e] = resident(layer, static_cast<uint32_t>(e));
    // Candidates: resident experts outside the top-k, most probable first.
    std::vector<int32_t> candidates;
    for (size_t e = 0; e < E; ++e) {
      if (is_resident[e] && !picked[e]) candidates.push_back(static_cast<int32_t>(e));
    }
    std::sort(candidates.begin(), candidates.end(), [&](int32_t a, int32_t b) {
      return p[static_cast<size_t>(a)] != p[static_cast<size_t>(b)] ? p[static_cast<size_t>(a)] > p[static_cast<size_t>(b)] : a < b;
    });
    size_t next = 0;
    // The least probable misses are the cheapest to give up: replace them first.
    for (size_t j = chosen.size(); j-- > 0 && next < candidates.size();) {
      auto e = static_cast<size_t>(chosen[j]);
      if (is_resident[e]) continue;
      auto c = static_cast<size_t>(candidates[next]);
      if (p[c] + margin < p[e]) break;  // candidates only get less probable, and earlier misses are more probable
      chosen[j] = candidates[next++];
    }
    // Keep the router's order (most probable first) for observers and traces.
    std::sort(chosen.begin(), chosen.end(), [&](int32_t a, int32_t b) {
      return p[static_cast<size_t>(a)] != p[static_cast<size_t>(b)] ? p[static_cast<size_t>(a)] > p[static_cast<size_t>(b)] : a < b;
    });
    WriteWeights(probs, normalize, chosen, experts, weights);
  };
}

}  // namespace es
