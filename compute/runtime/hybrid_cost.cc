// HybridCostModel implementation.
#include "compute/runtime/hybrid_cost.h"

#include <algorithm>

namespace es {

namespace {

// Rows up to this count are read as bandwidth-bound (a decode step, or two tokens sharing an expert).
constexpr size_t kBandwidthRows = 2;
constexpr double kFlopsPerParameterRow = 2.0;  // a multiply and an add per weight per row

}  // namespace

double HybridCostModel::CopySeconds(uint64_t bytes) const {
  const double b = static_cast<double>(bytes);
  return (b / o_.h2d_bytes_per_s + b / o_.gpu_bytes_per_s) / std::max(o_.copy_bias, 1e-9);
}

double HybridCostModel::CpuSeconds(uint64_t bytes, double weight_bytes, size_t rows) const {
  const double b = static_cast<double>(bytes);
  const double parameters = b / std::max(weight_bytes, 1e-3);
  const double flops = kFlopsPerParameterRow * parameters * static_cast<double>(rows);
  return b / o_.cpu_bytes_per_s + flops / o_.cpu_flops_per_s;
}

ExpertPlacement HybridCostModel::Choose(uint64_t bytes, double weight_bytes, size_t rows) const {
  return CpuSeconds(bytes, weight_bytes, rows) < CopySeconds(bytes) ? ExpertPlacement::kCpu : ExpertPlacement::kGpu;
}

void HybridCostModel::ObserveCpu(uint64_t bytes, double weight_bytes, size_t rows, double seconds) {
  if (!(seconds > 0) || bytes == 0 || rows == 0) return;
  const double a = std::clamp(o_.smoothing, 0.0, 1.0);
  const double b = static_cast<double>(bytes);
  if (rows <= kBandwidthRows) {
    // Bandwidth-bound: all of the time is the pass over the weights (the arithmetic term is folded in).
    const double arithmetic = CpuSeconds(bytes, weight_bytes, rows) - b / o_.cpu_bytes_per_s;
    const double pass = std::max(seconds - arithmetic, seconds * 0.5);
    o_.cpu_bytes_per_s = (1 - a) * o_.cpu_bytes_per_s + a * (b / pass);
    return;
  }
  const double arithmetic = seconds - b / o_.cpu_bytes_per_s;
  if (arithmetic <= 0) return;  // faster than the bandwidth term alone predicts: nothing to learn about flops
  const double parameters = b / std::max(weight_bytes, 1e-3);
  const double flops = kFlopsPerParameterRow * parameters * static_cast<double>(rows);
  o_.cpu_flops_per_s = (1 - a) * o_.cpu_flops_per_s + a * (flops / arithmetic);
}

void HybridCostModel::SetH2dBytesPerSecond(double rate) {
  if (rate > 0) o_.h2d_bytes_per_s = rate;
}

}  // namespace es
