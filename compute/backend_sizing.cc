// GPU expert cache sizing (pure arithmetic, in es_compute so that every backend build and the tests share it).
#include <algorithm>

#include "compute/backend.h"

namespace es {

namespace {

constexpr double kPercent = 100;
// Device memory the default GPU cache leaves free: a share of what is free, and at least this much, for the KV
// cache, activations and the CUDA runtime.
constexpr double kReserveShare = 0.1;
constexpr uint64_t kMinReserveBytes = uint64_t{1} << 30;

}  // namespace

Result<size_t> GpuExpertSlots(const BackendOptions& o, size_t total_experts, uint64_t slot_bytes, uint64_t free_bytes) {
  if (slot_bytes == 0 || total_experts == 0) return Status::InvalidArgument("GpuExpertSlots: no experts");
  const uint64_t reserve = std::max<uint64_t>(kMinReserveBytes, static_cast<uint64_t>(kReserveShare * free_bytes));
  size_t slots = 0;
  if (o.gpu_cache_pct) {
    slots = static_cast<size_t>(*o.gpu_cache_pct / kPercent * static_cast<double>(total_experts));
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
