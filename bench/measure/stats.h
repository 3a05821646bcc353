// Order statistics for the benchmarks: nearest-rank percentiles, throughput, and timings kept per repetition so
// that one noisy repetition cannot move a median. Pure functions of their inputs: no clocks, no I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace es::bench {

inline constexpr double kP50 = 0.5;
inline constexpr double kP99 = 0.99;

// The sample of rank round(p * (n - 1)) among the n samples sorted (p clamped to [0, 1]); 0 for no samples.
// Always one of the samples, never an interpolation between two.
double Percentile(std::vector<double> samples, double p);
// Percentile(samples, kP50): of an even count, the upper of the two middle samples.
double Median(std::vector<double> samples);

// Decimal gigabytes per second for `bytes` moved in `ms` milliseconds; 0 when ms is not positive.
double GigabytesPerSecond(uint64_t bytes, double ms);

// One timed method in one mode: every sample, grouped into repetitions.
class Timings {
 public:
  void Add(double ms) { all_ms_.push_back(ms); }
  // Closes the current repetition (the samples added since the last call) and keeps its p50.
  void EndRepetition();

  // The median over the closed repetitions of each one's p50; 0 before any is closed.
  double p50() const { return Median(repetition_p50_ms_); }
  // Over every sample of every repetition.
  double p99() const { return Percentile(all_ms_, kP99); }
  size_t samples() const { return all_ms_.size(); }

 private:
  std::vector<double> all_ms_;
  std::vector<double> repetition_p50_ms_;
  size_t repetition_begin_ = 0;  // index in all_ms_ of the open repetition's first sample
};

}  // namespace es::bench
