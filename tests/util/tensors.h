// Tensor helpers for kernel and model tests: random inputs and the relative L2 error the tests bound.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <span>
#include <vector>

namespace es::testing {

// ||actual - expected|| / ||expected|| (norms in double). Infinity when `actual` holds a NaN, so that a NaN
// fails every bound; `actual` must hold at least expected.size() values.
template <typename E>
double RelativeL2(std::span<const float> actual, std::span<const E> expected) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (std::isnan(actual[i])) return std::numeric_limits<double>::infinity();
    const double d = static_cast<double>(actual[i]) - static_cast<double>(expected[i]);
    diff += d * d;
    norm += static_cast<double>(expected[i]) * static_cast<double>(expected[i]);
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), std::numeric_limits<double>::min());
}
inline double RelativeL2(const std::vector<float>& actual, const std::vector<float>& expected) {
  return RelativeL2<float>(std::span<const float>(actual), std::span<const float>(expected));
}
inline double RelativeL2(const std::vector<float>& actual, const std::vector<double>& expected) {
  return RelativeL2<double>(std::span<const float>(actual), std::span<const double>(expected));
}

// n values from Normal(0, scale).
inline std::vector<float> RandomFloats(std::mt19937& rng, size_t n, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

}  // namespace es::testing
