// DeviceExpertCache: a fixed set of GPU slots, allocated once, holding experts copied from pinned host memory.
// Copies run on the cache's own copy stream (cudaMemcpyAsync) and record a per-slot "ready" event; compute on
// another stream waits on that event (cudaStreamWaitEvent) before it reads the slot, so uploads overlap with
// compute without the host waiting. Each slot also keeps a "last use" event recorded on the compute stream
// when its user releases it; eviction is least-recently-used among slots nobody holds, and the copy that
// overwrites a slot is never let run before its last use has completed (see Upload). Plain C++ interface.
//
// Thread safety: every method may be called from any thread (one mutex). Slot memory is owned by the cache;
// a DeviceSlot's pointer stays valid, and its bytes unchanged, from Acquire until the compute stream passes
// the matching Release. All compute that reads a cache's slots runs on one stream per cache (the last-use
// event of a slot is one event).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "compute/cuda/cuda_kernels.h"
#include "compute/cuda/slot_table.h"
#include "store/base/status.h"

namespace es::cuda {

// Slots start on 256-byte boundaries, as cudaMalloc's own allocations do, so vector loads stay aligned.
inline constexpr size_t kSlotAlignment = 256;

struct DeviceExpertCacheOptions {
  size_t slots = 0;       // fixed; > 0
  size_t slot_bytes = 0;  // the largest expert (rounded up to 256 bytes internally); > 0
};

// A resident expert held by its user. `data` is device memory (slot_bytes long; the expert's `bytes` first).
struct DeviceSlot {
  uint64_t key = 0;
  size_t index = 0;
  void* data = nullptr;
  size_t bytes = 0;
};

class DeviceExpertCache {
 public:
  // Allocates every slot, the copy stream and the events. NotSupported without a device.
  static Result<std::unique_ptr<DeviceExpertCache>> Create(const DeviceExpertCacheOptions& options);
  // Waits for the copy stream (no upload may outlive its slot); the caller must have synchronised its
  // compute stream past every Release.
  ~DeviceExpertCache();
  DeviceExpertCache(const DeviceExpertCache&) = delete;
  DeviceExpertCache& operator=(const DeviceExpertCache&) = delete;

  // Makes `key` resident without holding it (a prefetch). A hit only refreshes its recency. A miss takes a
  // free slot, else the least recently used slot nobody holds, preferring one whose last use has completed;
  // when every such slot is still in use on the GPU, the least recently used is taken and its copy is ordered
  // after that use with cudaStreamWaitEvent on the copy stream (the host never blocks, the bytes are never
  // overwritten early). Then cudaMemcpyAsync on the copy stream, and the slot's ready event.
  // `host` (bytes <= slot_bytes) should be pinned, or the copy is not asynchronous; it must stay valid and
  // unchanged until the copy has run: until a compute stream that waited on it (Acquire) has passed that
  // point, or Synchronize. ResourceExhausted when every slot is held.
  Status Upload(uint64_t key, const void* host, size_t bytes);

  // Upload, then hold the slot (it cannot be evicted until Release) and make `compute` wait for its bytes.
  Result<DeviceSlot> Acquire(uint64_t key, const void* host, size_t bytes, const CudaStream& compute);

  // Call after enqueueing on `compute` every kernel that reads the slot: records its last-use event there and
  // lets go of it. Each Acquire is released once.
  Status Release(const DeviceSlot& slot, const CudaStream& compute);

  bool Contains(uint64_t key) const;
  // Contains, and a resident key counts as just used (so that the uploads of the same layer evict others first).
  bool Touch(uint64_t key);
  DeviceCacheStats stats() const;
  size_t slots() const { return table_.size(); }
  size_t slot_bytes() const { return slot_bytes_; }
  // Blocks until every enqueued upload has completed.
  Status Synchronize() const;

 private:
  DeviceExpertCache() = default;
  // The part of Create that makes no CUDA call of its own: the checks, the slot size rounded up to
  // kSlotAlignment, the copy stream, the slot memory and the table. Create then gives each slot its events.
  static Result<std::unique_ptr<DeviceExpertCache>> Allocate(const DeviceExpertCacheOptions& options);
  // The slot holding `key`, uploading it on a miss. Caller holds mu_.
  Result<size_t> EnsureResident(uint64_t key, const void* host, size_t bytes);
  void* SlotData(size_t index) const;

  mutable std::mutex mu_;
  DeviceBuffer memory_;
  CudaStream copy_stream_;
  size_t slot_bytes_ = 0;
  internal::SlotTable table_;
};

// The methods that only consult the SlotTable or forward to the stream (no CUDA call of their own), inline so that
// es_cuda and the tests' host emulation share them.
inline Result<std::unique_ptr<DeviceExpertCache>> DeviceExpertCache::Allocate(const DeviceExpertCacheOptions& options) {
  if (options.slots == 0 || options.slot_bytes == 0) {
    return Status::InvalidArgument("DeviceExpertCache: slots and slot_bytes must be > 0");
  }
  const size_t slot_bytes = (options.slot_bytes + kSlotAlignment - 1) / kSlotAlignment * kSlotAlignment;
  std::unique_ptr<DeviceExpertCache> cache(new DeviceExpertCache());
  ES_ASSIGN_OR_RETURN(cache->copy_stream_, CudaStream::Create());
  ES_ASSIGN_OR_RETURN(cache->memory_, DeviceBuffer::Allocate(options.slots * slot_bytes));
  cache->slot_bytes_ = slot_bytes;
  cache->table_ = internal::SlotTable(options.slots);
  // Spelled out: nvcc's front end does not apply C++20's implicit move into a converting constructor.
  return Result<std::unique_ptr<DeviceExpertCache>>(std::move(cache));
}

inline void* DeviceExpertCache::SlotData(size_t index) const {
  return static_cast<char*>(memory_.data()) + index * slot_bytes_;
}

inline Status DeviceExpertCache::Upload(uint64_t key, const void* host, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  Result<size_t> slot = EnsureResident(key, host, bytes);
  return slot.ok() ? Status::Ok() : slot.status();
}

inline bool DeviceExpertCache::Contains(uint64_t key) const {
  std::lock_guard<std::mutex> lock(mu_);
  return table_.Contains(key);
}

inline bool DeviceExpertCache::Touch(uint64_t key) {
  std::lock_guard<std::mutex> lock(mu_);
  return table_.Touch(key);
}

inline DeviceCacheStats DeviceExpertCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return table_.stats();
}

inline Status DeviceExpertCache::Synchronize() const { return copy_stream_.Synchronize(); }

}  // namespace es::cuda
