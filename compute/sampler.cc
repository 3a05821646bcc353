// Sampler implementation: temperature, then top-k, then top-p over the sorted distribution (the order
// Hugging Face's generate applies its warpers in).
#include "compute/sampler.h"

#include <algorithm>
#include <cmath>

namespace es {

Result<Sampler> Sampler::Create(const SamplerOptions& options) {
  if (!(options.temperature >= 0.0f)) return Status::InvalidArgument("temperature must be >= 0");
  if (!(options.top_p > 0.0f && options.top_p <= 1.0f)) return Status::InvalidArgument("top_p must be in (0, 1]");
  return Sampler(options);
}

int32_t Sampler::Sample(std::span<const float> logits) {
  if (logits.empty()) return -1;
  if (options_.temperature == 0.0f) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  candidates_.clear();
  for (size_t i = 0; i < logits.size(); ++i) {
    candidates_.emplace_back(logits[i] / options_.temperature, static_cast<int32_t>(i));
  }
  auto by_logit = [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; };
  size_t keep = candidates_.size();
  if (options_.top_k > 0 && options_.top_k < keep) {
    keep = options_.top_k;
    std::partial_sort(candidates_.begin(), candidates_.begin() + static_cast<ptrdiff_t>(keep), candidates_.end(), by_logit);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  candidates_.resize(keep);
  float mx = candidates_.front().first;
  double sum = 0;
  std::vector<double> p(keep);
  for (size_t i = 0; i < keep; ++i) sum += (p[i] = std::exp(static_cast<double>(candidates_[i].first - mx)));
  // Nucleus: the smallest prefix whose probability reaches top_p (at least one token).
  size_t n = keep;
  if (options_.top_p < 1.0f) {
    double acc = 0;
    for (size_t i = 0; i < keep; ++i) {
      acc += p[i] / sum;
      if (acc >= options_.top_p) {
        n = i + 1;
        break;
      }
    }
  }
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += p[i];
  double r = std::uniform_real_distribution<double>(0.0, total)(rng_);
  for (size_t i = 0; i < n; ++i) {
    r -= p[i];
    if (r <= 0) return candidates_[i].second;
  }
  return candidates_[n - 1].second;
}

}  // namespace es
