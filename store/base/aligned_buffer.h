// AlignedBuffer: an owned, zero-initialised heap block aligned for O_DIRECT (4 KiB) or more.
// Not thread-safe; the memory lives as long as the buffer.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <span>
#include <utility>

namespace es {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  // Size 0 gives an empty buffer. On allocation failure the buffer is empty (check data()).
  explicit AlignedBuffer(size_t size, size_t alignment = 4096) {
    if (size == 0) return;
    size_t rounded = (size + alignment - 1) / alignment * alignment;
    data_ = static_cast<std::byte*>(std::aligned_alloc(alignment, rounded));
    if (data_ != nullptr) {
      std::memset(data_, 0, rounded);
      size_ = size;
    }
  }
  ~AlignedBuffer() { std::free(data_); }
  AlignedBuffer(AlignedBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    return *this;
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  std::byte* data() { return data_; }
  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<std::byte> span() { return {data_, size_}; }
  std::span<const std::byte> span() const { return {data_, size_}; }

 private:
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace es
