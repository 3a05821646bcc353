// Choosing a backend, and what this build and machine offer (es_backends: the one library that knows whether
// CUDA was compiled in).
#include "compute/backend.h"

#ifdef ES_HAVE_CUDA
#include "compute/cuda/cuda_backend.h"
#include "compute/cuda/cuda_kernels.h"
#endif

namespace es {

namespace {

constexpr uint64_t kMaxGpuCacheMb = uint64_t{1} << 30;
constexpr double kPercent = 100;

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
    return Status::InvalidArgument("--device must be cpu, cuda or hybrid, not '" + o.device + "'");
  }
  if (o.device == "cpu") {
    if (o.gpu_cache_mb || o.gpu_cache_pct) {
      return Status::InvalidArgument("--gpu-cache-mb and --gpu-cache-pct go with --device cuda or hybrid");
    }
    return Status::Ok();
  }
#ifndef ES_HAVE_CUDA
  return Status::NotSupported("--device " + o.device +
                              ": this build has no CUDA backend (nvcc was not found when it was configured)");
#else
  if (o.gpu_cache_mb && o.gpu_cache_pct) return Status::InvalidArgument("give --gpu-cache-mb or --gpu-cache-pct, not both");
  if (o.gpu_cache_mb && (*o.gpu_cache_mb == 0 || *o.gpu_cache_mb > kMaxGpuCacheMb)) {
    return Status::InvalidArgument("--gpu-cache-mb must be between 1 and " + std::to_string(kMaxGpuCacheMb));
  }
  if (o.gpu_cache_pct && !(*o.gpu_cache_pct > 0 && *o.gpu_cache_pct <= kPercent)) {
    return Status::InvalidArgument("--gpu-cache-pct must be in (0, 100]");
  }
  // Checked here too (not only when the backend is created), so that `serve` fails at start, not per request.
  if (!cuda::DeviceAvailable()) {
    return Status::NotSupported("--device " + o.device + ": no CUDA device found (the CUDA runtime reports none)");
  }
  return Status::Ok();
#endif
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

}  // namespace es
