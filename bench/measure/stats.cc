// Percentiles and per-repetition timings (stats.h).
#include "bench/measure/stats.h"

#include <algorithm>
#include <utility>

namespace es::bench {

namespace {
constexpr double kBytesPerGB = 1e9;
constexpr double kMsPerSecond = 1e3;
// Rounds a fractional rank to the nearest one.
constexpr double kHalfRank = 0.5;
}  // namespace

double Percentile(std::vector<double> samples, double p) {
  if (samples.empty()) return 0;
  std::sort(samples.begin(), samples.end());
  const double rank = std::clamp(p, 0.0, 1.0) * static_cast<double>(samples.size() - 1) + kHalfRank;
  return samples[std::min(static_cast<size_t>(rank), samples.size() - 1)];
}

double Median(std::vector<double> samples) { return Percentile(std::move(samples), kP50); }

double GigabytesPerSecond(uint64_t bytes, double ms) {
  return ms <= 0 ? 0 : static_cast<double>(bytes) / (ms / kMsPerSecond) / kBytesPerGB;
}

void Timings::EndRepetition() {
  repetition_p50_ms_.push_back(
      Median(std::vector<double>(all_ms_.begin() + static_cast<std::ptrdiff_t>(repetition_begin_), all_ms_.end())));
  repetition_begin_ = all_ms_.size();
}

}  // namespace es::bench
