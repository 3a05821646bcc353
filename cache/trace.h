// Routing traces: the JSON-lines format `expertstore trace` writes (docs/cache.md), one line per token and
// layer, {"token": t, "layer": l, "experts": [..], "weights": [..]}, and a synthetic generator with temporal
// locality for testing and benchmarking policies before real traces exist. Parsing is strict about the fields
// it reads (types, ranges, distinct experts) and ignores fields it does not know, so the format can grow.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "store/base/status.h"

namespace es {

struct TraceStep {
  uint64_t token = 0;
  uint32_t layer = 0;
  std::vector<uint32_t> experts;  // the router's picks, distinct, in the router's order
  std::vector<double> weights;    // their routing weights; empty when the trace has none
  // The experts the prefetcher was asked to read for this step before it ran (distinct), when a prediction was made
  // for it (`trace` with prefetch on); empty when the prediction passed no guess. Unset: none was made.
  std::optional<std::vector<uint32_t>> predicted;
};

// InvalidArgument naming the 1-based line for any malformed line. Blank lines are skipped.
Result<std::vector<TraceStep>> ParseTrace(std::string_view text);
Result<std::vector<TraceStep>> ReadTrace(const std::string& path);
// One line of the format, without the newline.
std::string FormatTraceLine(const TraceStep& step);
// Writes the trace, created or replaced atomically (WriteFileAtomic).
Status WriteTrace(const std::string& path, const std::vector<TraceStep>& steps);

// A generator of traces with the two kinds of locality real routing shows: a skewed popularity per layer (some
// experts are hot) that depends on the current topic, and reuse of the previous token's experts. Topics change
// at random (a geometric number of tokens, mean `topic_tokens`), so the hot set drifts over the trace.
// Deterministic for a given seed.
struct SyntheticTraceOptions {
  uint32_t layers = 4;
  uint32_t experts_per_layer = 128;
  uint32_t top_k = 8;
  uint32_t tokens = 1000;
  uint64_t seed = 1;
  uint32_t topics = 4;          // distinct hot sets per layer (each a random permutation of the experts)
  uint32_t topic_tokens = 128;  // mean tokens between topic changes
  double zipf_s = 1.0;          // popularity of the r-th most popular expert of a topic ~ 1 / r^zipf_s
  double repeat = 0.3;          // chance that a pick reuses one of the previous token's experts at the layer
};
// InvalidArgument for impossible shapes (top_k > experts_per_layer, zeros, probabilities outside [0, 1]).
Result<std::vector<TraceStep>> MakeSyntheticTrace(const SyntheticTraceOptions& options);

}  // namespace es
