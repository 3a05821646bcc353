// DeviceExpertCache: GPU slots fed from pinned host memory on a copy stream, with events for readiness and
// last use. See device_cache.h for the contract.
#include "compute/cuda/device_cache.h"

#include <string>
#include <utility>

#include "compute/cuda/cuda_common.cuh"

namespace es::cuda {
namespace {

// Slots start on 256-byte boundaries, as cudaMalloc's own allocations do, so vector loads stay aligned.
constexpr size_t kSlotAlignment = 256;

cudaEvent_t Event(void* e) { return static_cast<cudaEvent_t>(e); }

}  // namespace

Result<std::unique_ptr<DeviceExpertCache>> DeviceExpertCache::Create(const DeviceExpertCacheOptions& options) {
  if (options.slots == 0 || options.slot_bytes == 0) {
    return Status::InvalidArgument("DeviceExpertCache: slots and slot_bytes must be > 0");
  }
  const size_t slot_bytes = (options.slot_bytes + kSlotAlignment - 1) / kSlotAlignment * kSlotAlignment;
  std::unique_ptr<DeviceExpertCache> cache(new DeviceExpertCache());
  ES_ASSIGN_OR_RETURN(cache->copy_stream_, CudaStream::Create());
  ES_ASSIGN_OR_RETURN(cache->memory_, DeviceBuffer::Allocate(options.slots * slot_bytes));
  cache->slot_bytes_ = slot_bytes;
  cache->slots_.resize(options.slots);
  for (Slot& slot : cache->slots_) {
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
  for (Slot& slot : slots_) {
    if (slot.ready_event != nullptr) cudaEventDestroy(Event(slot.ready_event));
    if (slot.use_event != nullptr) cudaEventDestroy(Event(slot.use_event));
  }
}

void* DeviceExpertCache::SlotData(size_t index) const {
  return static_cast<char*>(memory_.data()) + index * slot_bytes_;
}

Result<size_t> DeviceExpertCache::PickVictim(bool* use_pending) {
  *use_pending = false;
  size_t oldest_done = slots_.size();
  size_t oldest_busy = slots_.size();
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Slot& slot = slots_[i];
    if (!slot.occupied) return i;
    if (slot.holders > 0) continue;
    bool done = true;
    if (slot.use_recorded) {
      const cudaError_t err = cudaEventQuery(Event(slot.use_event));
      if (err == cudaErrorNotReady) {
        done = false;
      } else if (err != cudaSuccess) {
        return CudaStatus(err, "DeviceExpertCache: cudaEventQuery");
      }
    }
    size_t& oldest = done ? oldest_done : oldest_busy;
    if (oldest == slots_.size() || slot.last_touch < slots_[oldest].last_touch) oldest = i;
  }
  if (oldest_done != slots_.size()) return oldest_done;
  if (oldest_busy != slots_.size()) {
    *use_pending = true;
    return oldest_busy;
  }
  return Status::ResourceExhausted("DeviceExpertCache: all " + std::to_string(slots_.size()) +
                                   " slots are held; release some before uploading more");
}

Result<size_t> DeviceExpertCache::EnsureResident(uint64_t key, const void* host, size_t bytes) {
  if (auto it = index_.find(key); it != index_.end()) {
    slots_[it->second].last_touch = ++clock_;
    ++stats_.hits;
    return it->second;
  }
  if (host == nullptr || bytes == 0) return Status::InvalidArgument("DeviceExpertCache: null or empty expert");
  if (bytes > slot_bytes_) {
    return Status::InvalidArgument("DeviceExpertCache: an expert of " + std::to_string(bytes) +
                                   " bytes exceeds the slot size " + std::to_string(slot_bytes_));
  }
  bool use_pending = false;
  ES_ASSIGN_OR_RETURN(size_t victim, PickVictim(&use_pending));
  Slot& slot = slots_[victim];
  if (slot.occupied) {
    index_.erase(slot.key);
    ++stats_.evictions;
    if (use_pending) ++stats_.ordered_evictions;
  }
  // From here until the copy is enqueued the slot is empty: a failure leaves it free, never half-claimed.
  slot.occupied = false;
  cudaStream_t copy = internal::Native(copy_stream_);
  if (use_pending) {
    // The previous expert's last reader has not finished: the copy stream waits for it on the GPU.
    ES_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(copy, Event(slot.use_event), 0));
  }
  ES_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(SlotData(victim), host, bytes, cudaMemcpyHostToDevice, copy));
  ES_CUDA_RETURN_IF_ERROR(cudaEventRecord(Event(slot.ready_event), copy));
  slot.occupied = true;
  slot.key = key;
  slot.bytes = bytes;
  slot.holders = 0;
  slot.use_recorded = false;
  slot.last_touch = ++clock_;
  index_[key] = victim;
  ++stats_.uploads;
  stats_.bytes_uploaded += bytes;
  return victim;
}

Status DeviceExpertCache::Upload(uint64_t key, const void* host, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  Result<size_t> slot = EnsureResident(key, host, bytes);
  return slot.ok() ? Status::Ok() : slot.status();
}

Result<DeviceSlot> DeviceExpertCache::Acquire(uint64_t key, const void* host, size_t bytes,
                                              const CudaStream& compute) {
  ES_RETURN_IF_ERROR(internal::CheckStream(compute, "DeviceExpertCache::Acquire"));
  std::lock_guard<std::mutex> lock(mu_);
  ES_ASSIGN_OR_RETURN(size_t index, EnsureResident(key, host, bytes));
  Slot& slot = slots_[index];
  // Compute reads the slot only after its copy; a completed event makes this free.
  ES_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(internal::Native(compute), Event(slot.ready_event), 0));
  ++slot.holders;
  return DeviceSlot{key, index, SlotData(index), slot.bytes};
}

Status DeviceExpertCache::Release(const DeviceSlot& held, const CudaStream& compute) {
  ES_RETURN_IF_ERROR(internal::CheckStream(compute, "DeviceExpertCache::Release"));
  std::lock_guard<std::mutex> lock(mu_);
  if (held.index >= slots_.size()) return Status::InvalidArgument("DeviceExpertCache::Release: no such slot");
  Slot& slot = slots_[held.index];
  if (!slot.occupied || slot.key != held.key || slot.holders == 0) {
    return Status::InvalidArgument("DeviceExpertCache::Release: the slot is not held for this key");
  }
  ES_CUDA_RETURN_IF_ERROR(cudaEventRecord(Event(slot.use_event), internal::Native(compute)));
  slot.use_recorded = true;
  --slot.holders;
  return Status::Ok();
}

bool DeviceExpertCache::Contains(uint64_t key) const {
  std::lock_guard<std::mutex> lock(mu_);
  return index_.count(key) != 0;
}

bool DeviceExpertCache::Touch(uint64_t key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return false;
  slots_[it->second].last_touch = ++clock_;
  return true;
}

DeviceCacheStats DeviceExpertCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

Status DeviceExpertCache::Synchronize() const { return copy_stream_.Synchronize(); }

}  // namespace es::cuda
