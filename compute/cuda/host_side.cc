// The parts of es_cuda's API that make no CUDA call: range checks, the KV cache's length, and DeviceExpertCache's
// methods that only consult its SlotTable. Plain C++, compiled into es_cuda and into the test emulator
// (tests/util/cuda_emulator.cc), which implements the rest over host memory.
#include <string>

#include "compute/cuda/cuda_kernels.h"
#include "compute/cuda/device_cache.h"

namespace es::cuda {

Status DeviceBuffer::CheckRange(size_t bytes, size_t offset, const char* what) const {
  if (data_ == nullptr) return Status::InvalidArgument(std::string(what) + ": empty buffer");
  if (offset > size_ || bytes > size_ - offset) {
    return Status::InvalidArgument(std::string(what) + ": " + std::to_string(bytes) + " bytes at offset " +
                                   std::to_string(offset) + " do not fit in " + std::to_string(size_));
  }
  return Status::Ok();
}

Status DeviceKvCache::Advance(size_t tokens) {
  if (tokens > capacity_ - length_) return Status::ResourceExhausted("DeviceKvCache::Advance: past the capacity");
  length_ += tokens;
  return Status::Ok();
}

Status DeviceKvCache::Truncate(size_t length) {
  if (length > length_) return Status::InvalidArgument("DeviceKvCache::Truncate: past the current length");
  length_ = length;
  return Status::Ok();
}

void* DeviceExpertCache::SlotData(size_t index) const {
  return static_cast<char*>(memory_.data()) + index * slot_bytes_;
}

Status DeviceExpertCache::Upload(uint64_t key, const void* host, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  Result<size_t> slot = EnsureResident(key, host, bytes);
  return slot.ok() ? Status::Ok() : slot.status();
}

bool DeviceExpertCache::Contains(uint64_t key) const {
  std::lock_guard<std::mutex> lock(mu_);
  return table_.Contains(key);
}

bool DeviceExpertCache::Touch(uint64_t key) {
  std::lock_guard<std::mutex> lock(mu_);
  return table_.Touch(key);
}

DeviceCacheStats DeviceExpertCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return table_.stats();
}

Status DeviceExpertCache::Synchronize() const { return copy_stream_.Synchronize(); }

}  // namespace es::cuda
