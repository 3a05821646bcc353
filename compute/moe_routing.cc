// MoeRouting implementation.
#include "compute/moe_routing.h"

#include <algorithm>
#include <cmath>
#include <map>

namespace es {

void RouterSoftmax(const float* logits, size_t n, float* out) {
  float mx = *std::max_element(logits, logits + n);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += (out[i] = std::exp(logits[i] - mx));
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(out[i] / sum);
}

size_t MoeRouting::top_k() const {
  return std::min<size_t>(options_.top_k == 0 ? c_.top_k : options_.top_k, c_.num_experts);
}

void MoeRouting::ApplyPolicy(uint32_t layer, const float* logits, size_t tokens, size_t k, int32_t* chosen,
                             float* weights) const {
  const size_t E = c_.num_experts;
  std::vector<float> probs(E);
  for (size_t t = 0; t < tokens; ++t) {
    RouterSoftmax(&logits[t * E], E, probs.data());
    options_.routing(layer, probs, k, {&chosen[t * k], k}, {&weights[t * k], k});
  }
}

Status MoeRouting::DropMissing(uint32_t layer, size_t t, size_t k, std::span<int32_t> chosen,
                               std::span<float> weights) const {
  bool dropped = false;
  for (size_t j = 0; j < k; ++j) {
    int32_t e = chosen[t * k + j];
    if (e < 0 || experts_.Has(layer, static_cast<uint32_t>(e))) continue;
    if (!options_.skip_missing_experts) {
      return Status::NotFound("the router picked expert " + std::to_string(e) + " of layer " + std::to_string(layer) +
                              ", which this partial checkpoint lacks (`skip_missing_experts` drops it)");
    }
    chosen[t * k + j] = -1;
    weights[t * k + j] = 0.0f;
    dropped = true;
  }
  if (dropped && c_.norm_topk_prob) {
    float sum = 0;
    for (size_t j = 0; j < k; ++j) sum += weights[t * k + j];
    if (sum > 0) {
      for (size_t j = 0; j < k; ++j) weights[t * k + j] /= sum;
    }
  }
  return Status::Ok();
}

Result<std::vector<ExpertRows>> MoeRouting::Dispatch(uint32_t layer, size_t tokens, size_t k,
                                                     std::span<int32_t> chosen, std::span<float> weights,
                                                     const std::function<size_t(size_t)>& position) {
  if (chosen.size() != tokens * k || weights.size() != tokens * k) {
    return Status::InvalidArgument("routing must hold k experts and weights per row");
  }
  std::map<uint32_t, ExpertRows> by_expert;
  for (size_t t = 0; t < tokens; ++t) {
    ES_RETURN_IF_ERROR(DropMissing(layer, t, k, chosen, weights));
    for (size_t j = 0; j < k; ++j) {
      if (chosen[t * k + j] >= 0 && weights[t * k + j] != 0.0f) {
        auto e = static_cast<uint32_t>(chosen[t * k + j]);
        ExpertRows& g = by_expert[e];
        g.expert = e;
        g.rows.push_back(static_cast<int32_t>(t));
        g.scales.push_back(weights[t * k + j]);
      }
    }
    if (options_.observer) {
      const bool made = layer < predicted_made_.size() && predicted_made_[layer];
      options_.observer({t, position(t), layer, chosen.subspan(t * k, k), weights.subspan(t * k, k),
                         made ? &predicted_[layer] : nullptr});
    }
  }
  std::vector<ExpertRows> out;
  std::vector<uint32_t> ids;
  out.reserve(by_expert.size());
  for (auto& [e, g] : by_expert) {
    ids.push_back(e);
    out.push_back(std::move(g));
  }
  ScorePrediction(layer, ids);
  return out;
}

std::vector<uint32_t> MoeRouting::LayersAhead(uint32_t layer) const {
  std::vector<uint32_t> layers;
  if (options_.prefetch_depth == 0 || !experts_.prefetches()) return layers;
  for (uint32_t l = layer + 1; l < c_.num_layers && layers.size() < options_.prefetch_depth; ++l) {
    if (c_.IsMoeLayer(l)) layers.push_back(l);
  }
  return layers;
}

const std::vector<uint32_t>& MoeRouting::Predicted(uint32_t layer, std::span<const int32_t> chosen,
                                                   std::span<const float> probability) {
  std::vector<uint32_t> ids;
  for (size_t i = 0; i < chosen.size(); ++i) {
    const int32_t e = chosen[i];
    if (e < 0 || !experts_.Has(layer, static_cast<uint32_t>(e))) continue;
    if (i < probability.size() && probability[i] < options_.prefetch_min_prob) continue;
    ids.push_back(static_cast<uint32_t>(e));
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  experts_.Prefetch(layer, ids);
  if (layer >= predicted_.size()) {
    predicted_.resize(layer + 1);
    predicted_made_.resize(layer + 1, false);
  }
  predicted_[layer] = std::move(ids);
  predicted_made_[layer] = true;
  return predicted_[layer];
}

void MoeRouting::ScorePrediction(uint32_t layer, const std::vector<uint32_t>& used) {
  PrefetchAccuracy* acc = options_.prefetch_accuracy;
  // A layer predicted counts its experts in the recall even when no guess passed the threshold.
  if (acc == nullptr || layer >= predicted_.size() || !predicted_made_[layer]) return;
  const auto& guess = predicted_[layer];
  acc->predicted += guess.size();
  acc->used += used.size();
  for (uint32_t e : used) acc->correct += std::binary_search(guess.begin(), guess.end(), e);
  predicted_[layer].clear();
  predicted_made_[layer] = false;
}

}  // namespace es
