// DeviceExpertCache: GPU slots fed from pinned host memory on a copy stream, with events for readiness and
// last use. See device_cache.h for the contract.
#include "compute/cuda/device_cache.h"

#include <optional>
#include <string>
#include <utility>

#include "compute/cuda/cuda_common.cuh"

namespace es::cuda {
namespace {

cudaEvent_t Event(void* e) { return static_cast<cudaEvent_t>(e); }

}  // namespace

Result<std::unique_ptr<DeviceExpertCache>> DeviceExpertCache::Create(const DeviceExpertCacheOptions& options) {
  ES_ASSIGN_OR_RETURN(std::unique_ptr<DeviceExpertCache> cache, Allocate(options));
  for (internal::SlotTable::Slot& slot : cache->table_.slots()) {
    cudaEvent_t ready = nullptr;
    cudaEvent_t use = nullptr;
    ES_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    slot.ready_event = ready;
    ES_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&use, cudaEventDisableTiming));
    slot.use_event = use;
  }
  // Spelled out: nvcc's front end does not apply C++20's implicit move into a converting constructor.
  return Result<std::unique_ptr<DeviceExpertCache>>(std::move(cache));
}

DeviceExpertCache::~DeviceExpertCache() {
  if (copy_stream_.valid()) copy_stream_.Synchronize().IgnoreError();  // teardown: nothing to report it to
  for (internal::SlotTable::Slot& slot : table_.slots()) {
    if (slot.ready_event != nullptr) cudaEventDestroy(Event(slot.ready_event));
    if (slot.use_event != nullptr) cudaEventDestroy(Event(slot.use_event));
  }
}

Result<size_t> DeviceExpertCache::EnsureResident(uint64_t key, const void* host, size_t bytes) {
  if (std::optional<size_t> hit = table_.Hit(key)) return *hit;
  if (host == nullptr || bytes == 0) return Status::InvalidArgument("DeviceExpertCache: null or empty expert");
  if (bytes > slot_bytes_) {
    return Status::InvalidArgument("DeviceExpertCache: an expert of " + std::to_string(bytes) +
                                   " bytes exceeds the slot size " + std::to_string(slot_bytes_));
  }
  auto use_done = [](void* event) -> Result<bool> {
    const cudaError_t err = cudaEventQuery(Event(event));
    if (err == cudaErrorNotReady) return false;
    if (err != cudaSuccess) return CudaStatus(err, "DeviceExpertCache: cudaEventQuery");
    return true;
  };
  bool use_pending = false;
  ES_ASSIGN_OR_RETURN(size_t victim, table_.PickVictim(use_done, &use_pending));
  table_.Vacate(victim, use_pending);
  internal::SlotTable::Slot& slot = table_[victim];
  cudaStream_t copy = internal::Native(copy_stream_);
  if (use_pending) {
    // The previous expert's last reader has not finished: the copy stream waits for it on the GPU.
    ES_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(copy, Event(slot.use_event), 0));
  }
  ES_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(SlotData(victim), host, bytes, cudaMemcpyHostToDevice, copy));
  ES_CUDA_RETURN_IF_ERROR(cudaEventRecord(Event(slot.ready_event), copy));
  table_.Fill(victim, key, bytes);
  return victim;
}

Result<DeviceSlot> DeviceExpertCache::Acquire(uint64_t key, const void* host, size_t bytes,
                                              const CudaStream& compute) {
  ES_RETURN_IF_ERROR(internal::CheckStream(compute, "DeviceExpertCache::Acquire"));
  std::lock_guard<std::mutex> lock(mu_);
  ES_ASSIGN_OR_RETURN(size_t index, EnsureResident(key, host, bytes));
  internal::SlotTable::Slot& slot = table_[index];
  // Compute reads the slot only after its copy; a completed event makes this free.
  ES_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(internal::Native(compute), Event(slot.ready_event), 0));
  ++slot.holders;
  return DeviceSlot{key, index, SlotData(index), slot.bytes};
}

Status DeviceExpertCache::Release(const DeviceSlot& held, const CudaStream& compute) {
  ES_RETURN_IF_ERROR(internal::CheckStream(compute, "DeviceExpertCache::Release"));
  std::lock_guard<std::mutex> lock(mu_);
  ES_RETURN_IF_ERROR(table_.CheckHeld(held.index, held.key));
  ES_CUDA_RETURN_IF_ERROR(cudaEventRecord(Event(table_[held.index].use_event), internal::Native(compute)));
  table_.Released(held.index);
  return Status::Ok();
}

}  // namespace es::cuda
