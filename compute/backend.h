// Backend: where a Model's forward pass runs, as ggml separates its backends. The model (config, dense weights on
// the host, the layer graph of its architecture) and the expert provider (the pinned host cache) are shared; a
// backend runs the graph's blocks with its own kernels and keeps whatever per-sequence state it needs beside the
// KvCache. The CPU backend (MakeCpuBackend) is the reference; the CUDA and hybrid backends live in
// compute/cuda/ (cuda_backend.h) and are compiled only when nvcc is found (ES_HAVE_CUDA).
//
// Model::Forward and Model::ComputeLogits check their arguments and call the backend; callers never call a
// backend directly. One Forward at a time per backend.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "compute/expert_provider.h"
#include "compute/model.h"
#include "store/status.h"
#include "store/store.h"

namespace es {

// What a backend did so far (summed over its calls); the CPU backend reports zeros.
struct BackendCounters {
  uint64_t device_hits = 0;      // routed experts found in GPU memory
  uint64_t device_uploads = 0;   // experts copied host -> GPU
  uint64_t bytes_uploaded = 0;
  uint64_t cpu_experts = 0;      // hybrid: routed experts computed on the CPU instead of copied
};

class Backend {
 public:
  virtual ~Backend() = default;
  // "cpu", "cuda" or "hybrid".
  virtual std::string name() const = 0;
  // One line on the backend ("cuda: NVIDIA H100, 96 of 192 experts in GPU memory (..)").
  virtual std::string describe() const = 0;

  // Model::Forward's work, its arguments already checked (tokens in the vocabulary, room in kv).
  virtual Status Forward(const Model& model, std::span<const int32_t> tokens, KvCache& kv, ExpertProvider& experts,
                         const ForwardOptions& options, std::vector<float>& hidden) = 0;
  // Model::ForwardRowsFrom's (calibration's ablations); arguments checked. Default: NotSupported.
  virtual Status ForwardRowsFrom(const Model& model, uint32_t layer, std::span<const float> residual,
                                 std::span<const size_t> positions, const ForcedRouting& routing, KvCache& kv,
                                 ExpertProvider& experts, const ForwardOptions& options, std::vector<float>& hidden);
  // logits [rows, vocab] (host) from final-normed hidden states [rows, hidden] (host).
  virtual Status ComputeLogits(const Model& model, const float* hidden, size_t rows, float* logits) = 0;
  virtual BackendCounters counters() const { return {}; }
};

// Which backend runs a model (the --device, --gpu-cache-mb and --gpu-cache-pct flags).
struct BackendOptions {
  std::string device = "cpu";            // cpu, cuda or hybrid
  std::optional<uint64_t> gpu_cache_mb;  // GPU memory for expert slots, in MiB
  std::optional<double> gpu_cache_pct;   // ... or as a percentage of the model's experts
  double hybrid_copy_bias = 1.0;         // hybrid: HybridCostOptions::copy_bias (tests force either side with it)
};

// Checks the names and ranges, and that this build and machine can run the backend (NotSupported: no CUDA
// compiled in, or no CUDA device).
Status ValidateBackendOptions(const BackendOptions& options);
// The backend for `model` (loaded from `store`, which must outlive the backend). cpu: the reference.
// cuda/hybrid: NotSupported without a CUDA device.
Result<std::unique_ptr<Backend>> CreateBackend(Store& store, const Model& model, const BackendOptions& options);

// GPU expert slots for `options` (--gpu-cache-pct: that share of `total_experts`; --gpu-cache-mb: that many
// bytes of slots; neither: every expert that fits in `free_bytes` less a reserve for activations and the KV
// cache), at most total_experts. The reserve (10% of free_bytes, at least 1 GiB) stays free in every case:
// ResourceExhausted when not even one slot fits, or a request leaves less than the reserve.
Result<size_t> GpuExpertSlots(const BackendOptions& options, size_t total_experts, uint64_t slot_bytes,
                              uint64_t free_bytes);

// The reference backend: the CPU kernels (compute/kernels), multithreaded through the model's CpuContext.
std::unique_ptr<Backend> MakeCpuBackend();

// Backends this build can run ("cpu", and "cuda" and "hybrid" when compiled with CUDA), and the GPUs the CUDA
// runtime reports (empty without CUDA, a driver or a device): what `info` prints.
std::vector<std::string> CompiledBackends();
std::vector<std::string> CudaDevices();

}  // namespace es
