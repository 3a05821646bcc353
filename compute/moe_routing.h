// MoeRouting: the backend-independent half of a MoE block, between the router's choice and the experts. Every
// backend computes the router (and the next layers' router predictions) with its own kernels, then hands the
// choices to one MoeRouting per Forward, which applies a routing policy, drops experts a partial checkpoint
// lacks, reports to the observer (usage recording, trace), groups the tokens by expert, feeds the prefetcher and
// scores its predictions. So the CPU and CUDA paths route identically by construction.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "compute/expert_provider.h"
#include "compute/model.h"
#include "store/base/status.h"

namespace es {

// The tokens one expert runs on: rows (ascending) and their routing weights.
struct ExpertRows {
  uint32_t expert = 0;
  std::vector<int32_t> rows;
  std::vector<float> scales;
};

class MoeRouting {
 public:
  MoeRouting(const ModelConfig& config, ExpertProvider& experts, const ForwardOptions& options)
      : c_(config), experts_(experts), options_(options) {}

  // Experts per token: the options' top_k, else the model's, at most num_experts.
  size_t top_k() const;

  // The routing policy's choice (ForwardOptions::routing, which must be set) from router logits [tokens, E]:
  // softmax per row, then the policy. chosen and weights are [tokens, k].
  void ApplyPolicy(uint32_t layer, const float* logits, size_t tokens, size_t k, int32_t* chosen,
                   float* weights) const;

  // After routing `tokens` rows (chosen/weights [tokens, k], -1 for none): drops experts the store lacks (or
  // fails, unless skip_missing_experts), reports each row to the observer with position(row), scores the
  // layer's earlier prediction, and returns the experts used in ascending order with their rows.
  Result<std::vector<ExpertRows>> Dispatch(uint32_t layer, size_t tokens, size_t k, std::span<int32_t> chosen,
                                           std::span<float> weights, const std::function<size_t(size_t)>& position);

  // The MoE layers after `layer` the prefetcher should predict (ForwardOptions::prefetch_depth of them, none
  // when the provider does not prefetch).
  std::vector<uint32_t> LayersAhead(uint32_t layer) const;
  // A prediction for `layer` (router choices [tokens * k] from the current hidden state, and the lookahead
  // router's probability of each): asks the provider to read ahead those the store has whose probability is at
  // least ForwardOptions::prefetch_min_prob, and keeps them to score when the layer runs. Returns them (sorted,
  // unique).
  const std::vector<uint32_t>& Predicted(uint32_t layer, std::span<const int32_t> chosen,
                                         std::span<const float> probability);

 private:
  Status DropMissing(uint32_t layer, size_t t, size_t k, std::span<int32_t> chosen, std::span<float> weights) const;
  void ScorePrediction(uint32_t layer, const std::vector<uint32_t>& used);

  const ModelConfig& c_;
  ExpertProvider& experts_;
  const ForwardOptions& options_;
  std::vector<std::vector<uint32_t>> predicted_;  // per layer: experts predicted for it (sorted), until scored
  std::vector<bool> predicted_made_;              // per layer: a prediction (perhaps empty) waits to be scored
};

// Softmax of n logits into out (may not alias), in double for the sum.
void RouterSoftmax(const float* logits, size_t n, float* out);

}  // namespace es
