// Calibration (the `dream` state, docs/metadata.md): measures each expert's contribution on a text, the mean
// increase in next-token NLL when the expert is removed from a token's top-k at one layer and the remaining
// experts are renormalised to the same total weight. Per window: one clean forward (capturing the residual
// stream entering every MoE block and the routing), then per MoE layer L and top-k slot j one batched re-run of
// the window's positions from L's MoE block on, with slot j removed (Model::ForwardRowsFrom: each position
// changed on its own, attending to the clean context), so an ablation costs only the layers from L on. Large
// models sample: a token budget spread over evenly spaced windows, and a fraction of each window's positions.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "compute/expert_provider.h"
#include "compute/model.h"
#include "store/base/status.h"

namespace es {

inline constexpr size_t kDefaultCalibrationWindow = 1024;

struct CalibrationOptions {
  size_t window = kDefaultCalibrationWindow;  // tokens per window, each from an empty context (at least 2)
  uint64_t max_tokens = 0;         // scored positions, about (0: all), from windows spread evenly over the text
  double position_fraction = 1.0;  // share of each window's positions that are ablated, sampled with `seed`
  uint64_t seed = 0;
  uint32_t top_k = 0;              // experts per token; 0: the model's
  bool skip_missing_experts = false;
  std::function<void(uint64_t done, uint64_t total)> progress;  // in windows
};

// Raw measurements of one expert.
struct ExpertContribution {
  uint64_t samples = 0;           // ablations measured (positions where it was in the top-k)
  double nll_increase_sum = 0;    // sum over them of ablated NLL - clean NLL, nats
  double nll_increase_sq_sum = 0; // and of its square (the standard error)
  // The same split by the parity of the position scored: two half-samples, whose rankings agree as far as the
  // sample size allows (the rank stability calibrate reports).
  std::array<uint64_t, 2> half_samples{};
  std::array<double, 2> half_sum{};
  uint64_t activations = 0;       // activations in the clean pass (all scored positions)
  double weight_sum = 0;          // routing weight over those activations
  double weight_sq_sum = 0;
  double mean_increase() const { return samples ? nll_increase_sum / static_cast<double>(samples) : 0; }
  // The standard error of mean_increase (0 below two samples).
  double increase_stderr() const;
};

struct CalibrationResult {
  uint32_t layers = 0;
  uint32_t experts_per_layer = 0;
  std::vector<ExpertContribution> experts;  // [layer * experts_per_layer + expert]
  uint64_t tokens = 0;               // positions scored by the clean pass
  uint64_t ablated_positions = 0;    // positions whose top-k was ablated
  uint64_t ablations = 0;            // (position, layer, slot) ablations measured
  double clean_nll = 0;              // total clean NLL of the scored positions
  double seconds = 0;
};

// A piece of one sequence that a pass over a text runs from an empty context.
struct TextWindow {
  size_t sequence = 0;
  size_t start = 0;
  size_t length = 0;
};

// The windows of at least 2 tokens covering every sequence (`window` tokens each, the last of a sequence
// shorter), or, with a budget, evenly spaced ones holding about max_tokens positions that predict a next token.
std::vector<TextWindow> PickTextWindows(std::span<const std::vector<int32_t>> sequences, size_t window,
                                        uint64_t max_tokens);

// Calibrates on `sequences`, each cut into windows of its own (windows never span two sequences).
Result<CalibrationResult> Calibrate(Model& model, ExpertProvider& experts, std::span<const std::vector<int32_t>> sequences,
                                    const CalibrationOptions& options);

}  // namespace es
