// Choosing the backend that runs a model: the options (device and GPU cache size), their validation against
// this build and machine, creating the backend, sizing the GPU expert cache, and what the build offers (what
// `info` prints). The one place that knows whether CUDA was compiled in (ES_HAVE_CUDA).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "compute/backend.h"
#include "compute/model.h"
#include "store/base/status.h"
#include "store/store.h"

namespace es {

// Which backend runs a model. Validation errors name these fields.
struct BackendOptions {
  std::string device = "cpu";            // cpu, cuda or hybrid
  std::optional<uint64_t> gpu_cache_mb;  // GPU memory for expert slots, in MiB
  std::optional<double> gpu_cache_pct;   // ... or as a percentage of the model's experts
  double hybrid_copy_bias = 1.0;         // hybrid: HybridCostOptions::copy_bias (tests force either side with it)
};

// Whether the model keeps a tensor in a GGML block format (a quantized GGUF): only the CPU backend computes on
// those, and only they take the integer path of q8 activations. Scans the model's expert records.
Result<bool> HoldsBlockFormats(Store& store, const Model& model);

// Checks the names and ranges, and that this build and machine can run the backend (NotSupported: no CUDA
// compiled in, or no CUDA device).
Status ValidateBackendOptions(const BackendOptions& options);
// The backend for `model` (loaded from `store`, which must outlive the backend). cpu: the reference.
// cuda/hybrid: NotSupported without a CUDA device.
Result<std::unique_ptr<Backend>> CreateBackend(Store& store, const Model& model, const BackendOptions& options);

// GPU expert slots for `options` (gpu_cache_pct: that share of `total_experts`; gpu_cache_mb: that many bytes
// of slots; neither: every expert that fits in `free_bytes` less a reserve for activations and the KV cache), at
// most total_experts. The reserve (10% of free_bytes, at least 1 GiB) stays free in every case:
// ResourceExhausted when not even one slot fits, or a request leaves less than the reserve.
Result<size_t> GpuExpertSlots(const BackendOptions& options, size_t total_experts, uint64_t slot_bytes,
                              uint64_t free_bytes);

// Backends this build can run ("cpu", and "cuda" and "hybrid" when compiled with CUDA), and the GPUs the CUDA
// runtime reports (empty without CUDA, a driver or a device).
std::vector<std::string> CompiledBackends();
std::vector<std::string> CudaDevices();

}  // namespace es
