// LatencyHistogram: bucket lookup and quantile bounds.
#include "cache/stats.h"

#include <algorithm>
#include <limits>

namespace es {

void LatencyHistogram::Observe(double seconds) {
  size_t i = static_cast<size_t>(std::lower_bound(kSwapInBucketBounds.begin(), kSwapInBucketBounds.end(), seconds) -
                                 kSwapInBucketBounds.begin());
  ++counts[i];
  ++count;
  sum_seconds += seconds;
}

uint64_t LatencyHistogram::Cumulative(size_t bucket) const {
  uint64_t total = 0;
  for (size_t i = 0; i <= bucket && i < counts.size(); ++i) total += counts[i];
  return total;
}

double LatencyHistogram::QuantileUpperBound(double q) const {
  if (count == 0) return 0;
  const double rank = q * static_cast<double>(count);
  uint64_t seen = 0;
  for (size_t i = 0; i < kSwapInBucketBounds.size(); ++i) {
    seen += counts[i];
    if (static_cast<double>(seen) >= rank) return kSwapInBucketBounds[i];
  }
  return std::numeric_limits<double>::infinity();
}

}  // namespace es
