// HybridCostModel: where the hybrid backend runs a routed expert that missed in GPU memory but is in host
// memory (the pinned cache): copy it to the GPU and run it there, or run it on the CPU where it already is and
// move only the activations (Fiddler's observation, and what llama.cpp's --cpu-moe does for every expert).
//
//   copy:  bytes / h2d_bytes_per_s + bytes / gpu_bytes_per_s          (upload, then one pass on the GPU)
//   cpu:   bytes / cpu_bytes_per_s + rows * flops / cpu_flops_per_s   (one pass over the weights, plus the
//                                                                       arithmetic of each extra row)
//
// with flops = 2 * rows * parameters (the three projections). Decode (1 row) is bandwidth-bound on both sides, so
// the CPU wins when its memory bandwidth beats the link; a prefill chunk's many rows make the CPU's arithmetic
// dominate and the copy wins. The rates start from priors (the H2D rate measured by the backend at start-up) and
// follow what the CPU path actually takes: each CPU expert's time updates an exponential moving average of its
// bandwidth (rows <= 2) or of its arithmetic rate (more rows). An uploaded expert also stays in GPU memory for
// later tokens, which this per-call model does not credit; `copy_bias` (> 1 favours copying) is the knob.
// Not thread-safe; the backend holds one per model.
#pragma once

#include <cstddef>
#include <cstdint>

namespace es {

enum class ExpertPlacement { kGpu, kCpu };

struct HybridCostOptions {
  double h2d_bytes_per_s = 20e9;     // pinned host -> device (PCIe 4 x16 sustains about 25 GB/s)
  double gpu_bytes_per_s = 2e12;     // device memory (H100: 3.35 TB/s peak)
  double cpu_bytes_per_s = 15e9;     // CPU GEMV over bf16 weights
  double cpu_flops_per_s = 200e9;    // CPU fp32 FMA throughput of the expert kernels, all threads
  double copy_bias = 1.0;            // the copy's cost is divided by this
  double smoothing = 0.2;            // weight of a new observation in the moving averages
};

class HybridCostModel {
 public:
  explicit HybridCostModel(const HybridCostOptions& options = {}) : o_(options) {}

  // Seconds each way for an expert of `bytes` (bytes per weight `weight_bytes`: 2 for bf16, 0.5625 for Q4_K) on
  // `rows` tokens.
  double CopySeconds(uint64_t bytes) const;
  double CpuSeconds(uint64_t bytes, double weight_bytes, size_t rows) const;
  ExpertPlacement Choose(uint64_t bytes, double weight_bytes, size_t rows) const;

  // A CPU expert of `bytes` on `rows` rows took `seconds`: refines the CPU rates.
  void ObserveCpu(uint64_t bytes, double weight_bytes, size_t rows, double seconds);
  // A measured upload rate (the backend times uploads when it can).
  void SetH2dBytesPerSecond(double rate);

  const HybridCostOptions& rates() const { return o_; }

 private:
  HybridCostOptions o_;
};

}  // namespace es
