// Sampler: picks the next token from logits. Penalties on recently seen tokens first (repetition as in
// transformers and llama.cpp, presence and frequency as in OpenAI's API), then greedy (temperature 0), or
// temperature, top-k, top-p (nucleus) and min-p filtering, seeded for reproducibility. Not thread-safe (it owns
// its random state and its window of recent tokens).
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <random>
#include <span>
#include <string_view>
#include <vector>

#include "store/base/status.h"

namespace es {

struct SamplerOptions {
  float temperature = 0.0f;        // 0: greedy
  uint32_t top_k = 0;              // 0: no limit
  float top_p = 1.0f;              // 1: no limit
  float min_p = 0.0f;              // keep tokens at least min_p times as likely as the most likely; 0: off
  float repetition_penalty = 1.0f; // > 1 discourages tokens in the window (a positive logit divided, a negative
                                   // one multiplied); 1: off
  float presence_penalty = 0.0f;   // subtracted from the logit of each token in the window; 0: off
  float frequency_penalty = 0.0f;  // subtracted once per occurrence in the window; 0: off
  uint32_t penalty_last_n = 64;    // the window: the last n tokens, prompt included (llama.cpp's default)
  uint64_t seed = 0;
};

// OpenAI's range for presence and frequency penalties, and the largest repetition penalty accepted.
inline constexpr float kMaxAbsPenalty = 2.0f;
inline constexpr float kMaxRepetitionPenalty = 10.0f;

// Sampling settings a command line or a request gives; each unset one takes the model's default.
struct SamplerRequest {
  std::optional<float> temperature;
  std::optional<uint32_t> top_k;
  std::optional<float> top_p;
  std::optional<float> min_p;
  std::optional<float> repetition_penalty;
  std::optional<float> presence_penalty;
  std::optional<float> frequency_penalty;
  std::optional<uint32_t> penalty_last_n;
  std::optional<uint64_t> seed;
  SamplerOptions Over(const SamplerOptions& defaults) const;
};

// A model's sampling defaults from its generation_config.json, as transformers and vLLM take them: with
// do_sample true, its temperature (else 1), top_k, top_p, min_p and repetition_penalty where given; without
// do_sample (or with it false), greedy decoding with its repetition_penalty. Empty text (no file): greedy.
// InvalidArgument for a file that is not a JSON object or holds a value out of range.
Result<SamplerOptions> SamplerDefaultsFromGenerationConfig(std::string_view json);

class Sampler {
 public:
  // InvalidArgument naming the field (`temperature`, `top_p`, ...) for a value out of range.
  static Result<Sampler> Create(const SamplerOptions& options);
  // Appends a token to the penalty window (the prompt's, then each generated one).
  void Accept(int32_t token);
  // The chosen token. Greedy ties go to the lower id (as torch.argmax does).
  int32_t Sample(std::span<const float> logits);

 private:
  explicit Sampler(const SamplerOptions& options) : options_(options), rng_(options.seed) {}
  bool penalized() const;
  SamplerOptions options_;
  std::mt19937_64 rng_;
  std::deque<int32_t> window_;
  std::vector<float> penalized_;
  std::vector<std::pair<int32_t, uint32_t>> counts_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

}  // namespace es
