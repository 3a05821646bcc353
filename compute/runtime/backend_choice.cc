// Choosing a backend, sizing the GPU cache, and what this build and machine offer.
#include "compute/runtime/backend_choice.h"

#include <algorithm>

#include "cache/cache_size.h"

#ifdef ES_HAVE_CUDA
#include "compute/cuda/cuda_kernels.h"
#include "compute/runtime/cuda_backend.h"
#endif

namespace es {

namespace {

// Device memory the default GPU cache leaves free: a share of what is free, and at least this much, for the KV
// cache, activations and the CUDA runtime.
constexpr double kReserveShare = 0.1;
constexpr uint64_t kMinReserveBytes = uint64_t{1} << 30;

}  // namespace

std::vector<std::string> CompiledBackends() {
#ifdef ES_HAVE_CUDA
  return {"cpu", "cuda", "hybrid"};
#else
  return {"cpu"};
#endif
}

std::vector<std::string> CudaDevices() {
  std::vector<std::string> out;
#ifdef ES_HAVE_CUDA
  if (!cuda::DeviceAvailable()) return out;
  for (int d = 0;; ++d) {
    auto info = cuda::GetDeviceInfo(d);
    if (!info.ok()) break;
    out.push_back(info->name + " (sm_" + std::to_string(info->compute_major) + std::to_string(info->compute_minor) +
                  ", " + std::to_string(info->total_memory_bytes >> 20) + " MiB)");
  }
#endif
  return out;
}

Status ValidateBackendOptions(const BackendOptions& o) {
  if (o.device != "cpu" && o.device != "cuda" && o.device != "hybrid") {
    return Status::InvalidArgument("`device` must be cpu, cuda or hybrid, not '" + o.device + "'");
  }
  if (o.device == "cpu") {
    if (o.gpu_cache_mb || o.gpu_cache_pct) {
      return Status::InvalidArgument("`gpu_cache_mb` and `gpu_cache_pct` go with `device` cuda or hybrid");
    }
    return Status::Ok();
  }
#ifndef ES_HAVE_CUDA
  return Status::NotSupported("`device` " + o.device +
                              ": this build has no CUDA backend (nvcc was not found when it was configured)");
#else
  ES_RETURN_IF_ERROR(ValidateCacheSize({o.gpu_cache_mb, o.gpu_cache_pct}, "gpu_cache"));
  // Checked here too (not only when the backend is created), so that `serve` fails at start, not per request.
  if (!cuda::DeviceAvailable()) {
    return Status::NotSupported("`device` " + o.device + ": no CUDA device found (the CUDA runtime reports none)");
  }
  return Status::Ok();
#endif
}

Result<bool> HoldsBlockFormats(Store& store, const Model& model) {
  if (model.weights().has_blocks()) return true;
  bool blocks = false;
  Status bad;
  ES_RETURN_IF_ERROR(store.catalog().Scan(Cf::kExperts, ModelPrefix(model.info().name),
                                          [&](std::string_view, std::string_view value) {
                                            auto expert = DecodeExpert(value);
                                            if (!expert.ok()) {
                                              bad = expert.status();
                                              return false;
                                            }
                                            for (const auto& p : expert->projections) {
                                              blocks = blocks || p.ggml_type != kNoGgmlType;
                                            }
                                            return !blocks;
                                          }));
  ES_RETURN_IF_ERROR(bad);
  return blocks;
}

Result<std::unique_ptr<Backend>> CreateBackend(Store& store, const Model& model, const BackendOptions& options) {
  ES_RETURN_IF_ERROR(ValidateBackendOptions(options));
  if (options.device == "cpu") return MakeCpuBackend();
#ifdef ES_HAVE_CUDA
  return CreateCudaBackend(store, model, options);
#else
  (void)store;
  (void)model;
  return Status::NotSupported("no CUDA backend in this build");
#endif
}

Result<size_t> GpuExpertSlots(const BackendOptions& o, size_t total_experts, uint64_t slot_bytes, uint64_t free_bytes) {
  if (slot_bytes == 0 || total_experts == 0) return Status::InvalidArgument("GpuExpertSlots: no experts");
  const uint64_t reserve = std::max<uint64_t>(kMinReserveBytes, static_cast<uint64_t>(kReserveShare * free_bytes));
  size_t slots = 0;
  if (o.gpu_cache_pct) {
    slots = static_cast<size_t>(PercentOfSlots(*o.gpu_cache_pct, total_experts));
  } else if (o.gpu_cache_mb) {
    slots = static_cast<size_t>((*o.gpu_cache_mb << 20) / slot_bytes);
  } else {
    slots = free_bytes > reserve ? static_cast<size_t>((free_bytes - reserve) / slot_bytes) : 0;
  }
  slots = std::min(slots, total_experts);
  if (slots == 0) {
    return Status::ResourceExhausted("the GPU cache holds no expert of " + std::to_string(slot_bytes >> 10) +
                                     " KiB (" + std::to_string(free_bytes >> 20) + " MiB of device memory free, " +
                                     std::to_string(reserve >> 20) + " MiB kept for the KV cache and activations)");
  }
  const uint64_t need = static_cast<uint64_t>(slots) * slot_bytes;
  if (need + reserve > free_bytes) {
    return Status::ResourceExhausted("a GPU cache of " + std::to_string(slots) + " experts needs " +
                                     std::to_string(need >> 20) + " MiB, and " + std::to_string(reserve >> 20) +
                                     " MiB stay for the KV cache and activations; " +
                                     std::to_string(free_bytes >> 20) + " MiB of device memory is free");
  }
  return slots;
}

}  // namespace es
