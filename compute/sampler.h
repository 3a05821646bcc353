// Sampler: picks the next token from logits: greedy (temperature 0), or temperature with top-k and top-p
// (nucleus) filtering, seeded for reproducibility. Not thread-safe (it owns its random state).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "store/base/status.h"

namespace es {

struct SamplerOptions {
  float temperature = 0.0f;  // 0: greedy
  uint32_t top_k = 0;        // 0: no limit
  float top_p = 1.0f;        // 1: no limit
  uint64_t seed = 0;
};

class Sampler {
 public:
  // InvalidArgument for a negative temperature or top_p outside (0, 1].
  static Result<Sampler> Create(const SamplerOptions& options);
  // The chosen token. Greedy ties go to the lower id (as torch.argmax does).
  int32_t Sample(std::span<const float> logits);

 private:
  explicit Sampler(const SamplerOptions& options) : options_(options), rng_(options.seed) {}
  SamplerOptions options_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

}  // namespace es
