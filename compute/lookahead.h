// Fitted lookahead routers: per MoE layer s and each of the next few MoE layers t, a linear map from the residual
// stream entering s's MoE block (RMS-normalised, without weights) to t's router logits, fitted by ridge
// regression on a text toward t's own router applied early (what the prefetcher uses without a fit). The
// prefetcher predicts with them; they never change the model's output.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "compute/expert_provider.h"
#include "compute/kernels/cpu_kernels.h"
#include "compute/model.h"
#include "store/base/status.h"
#include "store/store.h"

namespace es {

// The model asset a fit is stored as (docs/cache.md gives its layout).
inline constexpr std::string_view kLookaheadAsset = "expertstore.lookahead";
inline constexpr uint32_t kDefaultLookaheadDepth = 1;
inline constexpr uint32_t kMaxLookaheadDepth = 4;
// The ridge penalty as a share of the features' mean square (their Gram matrix's mean diagonal).
inline constexpr double kDefaultLookaheadRidge = 0.01;
// The fit holds out this share of its text's windows (the last ones) and picks the lowest threshold, on a grid of
// multiples of chance (1/experts) from 1 to kLookaheadMaxThresholdOverChance, at which the next layer's
// predictions there are right kLookaheadTargetPrecision of the time.
inline constexpr double kLookaheadValidationShare = 0.1;
inline constexpr double kLookaheadTargetPrecision = 0.9;
inline constexpr double kLookaheadThresholdStep = 0.05;
inline constexpr double kLookaheadMaxThresholdOverChance = 8.0;

// One fitted map: logits[E] = weights [E, hidden] . rmsnorm(x) + bias.
struct LookaheadMap {
  std::vector<float> weights;  // [experts, hidden], row-major
  std::vector<float> bias;     // [experts]
};

class LookaheadPredictor {
 public:
  LookaheadPredictor() = default;
  LookaheadPredictor(uint32_t hidden, uint32_t experts) : hidden_(hidden), experts_(experts), ones_(hidden, 1.0f) {}

  uint32_t hidden() const { return hidden_; }
  uint32_t experts() const { return experts_; }
  size_t size() const { return maps_.size(); }
  // The deepest target fitted for any source (in MoE layers ahead).
  uint32_t depth() const { return depth_; }
  // The probability (softmax of the predicted logits) a prediction needs to be prefetched, chosen by the fit: the
  // prefetcher's default threshold with these maps.
  float min_prob() const { return min_prob_; }
  void set_min_prob(float p) { min_prob_ = p; }
  // The map from source layer `from` to target layer `to`; null when none was fitted.
  const LookaheadMap* Find(uint32_t from, uint32_t to) const;
  void Put(uint32_t from, uint32_t to, uint32_t ahead, LookaheadMap map);

  // Predicted router logits [rows, experts] of layer `to` from the residual stream x [rows, hidden] entering the
  // MoE block of `from`. InvalidArgument when no map was fitted for the pair.
  Status Logits(const kernels::CpuContext& ctx, uint32_t from, uint32_t to, const float* x, size_t rows,
                float rms_eps, float* logits) const;

  // The asset's bytes and back. Parse checks the magic, the sizes against the model, and that every value is
  // finite: Corruption otherwise.
  std::string Serialize() const;
  static Result<LookaheadPredictor> Parse(std::string_view bytes, const ModelConfig& config);

 private:
  uint32_t hidden_ = 0;
  uint32_t experts_ = 0;
  uint32_t depth_ = 0;
  float min_prob_ = 0;
  std::vector<float> ones_;  // [hidden]: the unit weights the inputs' RMS norm runs with
  std::map<std::pair<uint32_t, uint32_t>, LookaheadMap> maps_;
};

struct LookaheadFitOptions {
  uint32_t depth = kDefaultLookaheadDepth;  // targets per source: the next `depth` MoE layers
  double ridge = kDefaultLookaheadRidge;
  size_t window = 512;      // tokens per forward pass (at least 2), each window from an empty context
  uint64_t max_tokens = 0;  // about this many tokens, from windows spread evenly over the text (0: the whole text)
  bool skip_missing_experts = false;
  std::function<void(uint64_t done, uint64_t total)> progress;  // in windows
};

// How well predictions match the routing on a text: a prediction for a row and layer is the top-k of the
// predicted logits kept when its softmax probability is at least the threshold.
struct LookaheadScore {
  double threshold = 0;
  uint64_t predicted = 0;  // experts predicted (above the threshold)
  uint64_t correct = 0;    // of them, routed to by that row at that layer
  uint64_t used = 0;       // experts routed to, over every row and predicted layer
  double precision() const { return predicted ? static_cast<double>(correct) / static_cast<double>(predicted) : 0; }
  double recall() const { return used ? static_cast<double>(correct) / static_cast<double>(used) : 0; }
};

struct LookaheadFitResult {
  LookaheadPredictor predictor;
  uint64_t tokens = 0;    // rows the maps were fitted on
  uint64_t validation_tokens = 0;  // rows held out to choose the threshold
  std::vector<LookaheadScore> validation;  // next-layer scores there, one per threshold of the grid
  double seconds = 0;
};

// Fits maps for every MoE layer and the next options.depth MoE layers after it on `sequences` (each cut into
// windows of its own). Memory: one (hidden + 1)^2 matrix of doubles per MoE layer.
Result<LookaheadFitResult> FitLookahead(Model& model, ExpertProvider& experts,
                                        std::span<const std::vector<int32_t>> sequences,
                                        const LookaheadFitOptions& options);

// Scores, one token row at a time as decode sees them, the predictions `depth` MoE layers ahead on `sequences`
// at each threshold: with `predictor` when given, else with the target layers' own routers applied early (the
// prefetcher's default). One score per threshold.
Result<std::vector<LookaheadScore>> ScoreLookahead(Model& model, ExpertProvider& experts,
                                                   std::span<const std::vector<int32_t>> sequences,
                                                   const LookaheadPredictor* predictor, uint32_t depth,
                                                   std::span<const double> thresholds,
                                                   const LookaheadFitOptions& options);

// Reads the model's stored fit. NotFound when the model has none.
Result<LookaheadPredictor> LoadLookahead(Store& store, const Model& model);

}  // namespace es
